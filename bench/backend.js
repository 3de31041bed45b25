'use strict';
// Tiny HTTP backend for the lbproxy benchmark (no npm packages).
//
// Usage: node backend.js PORT NAME [DELAY_MS]
//   GET /        -> "PORT NAME\n", after DELAY_MS milliseconds if given
//                   (the balance suite's slow server)
//   GET /count   -> how many GET / this backend has answered (the balance
//                   suite reads it before and after a run)
//   GET /64k     -> 65536 bytes
//   POST /upload -> reads the whole body, answers with its length in bytes
//   GET /stream/N -> N bytes ('x'), Content-Length set, written in 64 KiB
//                    chunks with backpressure (waits for 'drain' whenever
//                    res.write() says the socket buffer is full)
//   POST /upload-timed -> reads the whole body, answers JSON
//                    {"length": N, "first_byte_ms": T1, "last_byte_ms": T2}
//                    where T1/T2 are the wall-clock times (epoch ms,
//                    fractional) the first/last body byte reached this app
// Listens on 127.0.0.1 only, keep-alive on.

const http = require('http');

const port = parseInt(process.argv[2], 10);
const name = process.argv[3] || String(port);
const delayMs = Number(process.argv[4] || 0);
let answered = 0;
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node backend.js PORT NAME');
  process.exit(2);
}

const small = Buffer.from(`PORT ${name}\n`);
const big = Buffer.alloc(64 * 1024, 'x');
const STREAM_MAX = 64 * 1024 * 1024 * 1024; // refuse absurd sizes

// Epoch milliseconds with sub-millisecond resolution.
function nowMs() {
  return performance.timeOrigin + performance.now();
}

// Stream `total` bytes, never queueing more than the socket buffer takes.
function stream(res, total) {
  res.writeHead(200, {
    'Content-Type': 'application/octet-stream',
    'Content-Length': total,
  });
  let left = total;
  let closed = false;
  res.on('close', () => { closed = true; });
  function pump() {
    while (left > 0 && !closed) {
      const n = Math.min(left, big.length);
      left -= n;
      if (!res.write(n === big.length ? big : big.subarray(0, n))) {
        res.once('drain', pump);
        return;
      }
    }
    if (!closed) res.end();
  }
  pump();
}

function reply(res, status, body) {
  res.writeHead(status, {
    'Content-Type': 'text/plain',
    'Content-Length': body.length,
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/') {
    answered += 1;
    if (delayMs > 0) {
      setTimeout(() => reply(res, 200, small), delayMs);
    } else {
      reply(res, 200, small);
    }
  } else if (req.method === 'GET' && req.url === '/count') {
    reply(res, 200, Buffer.from(`${answered}\n`));
  } else if (req.method === 'GET' && req.url === '/64k') {
    reply(res, 200, big);
  } else if (req.method === 'POST' && req.url === '/upload') {
    let length = 0;
    req.on('data', (chunk) => { length += chunk.length; });
    req.on('end', () => reply(res, 200, Buffer.from(`${length}\n`)));
  } else if (req.method === 'GET' && req.url.startsWith('/stream/')) {
    const total = Number(req.url.slice('/stream/'.length));
    if (!Number.isSafeInteger(total) || total < 0 || total > STREAM_MAX) {
      reply(res, 400, Buffer.from('bad size\n'));
    } else {
      stream(res, total);
    }
  } else if (req.method === 'POST' && req.url === '/upload-timed') {
    let length = 0;
    let first = null;
    let last = null;
    req.on('data', (chunk) => {
      last = nowMs();
      if (first === null) first = last;
      length += chunk.length;
    });
    req.on('end', () => {
      const body = JSON.stringify({ length, first_byte_ms: first, last_byte_ms: last });
      res.writeHead(200, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(body),
      });
      res.end(body);
    });
  } else {
    req.resume();
    reply(res, 404, Buffer.from('not found\n'));
  }
});

// Keep pooled proxy connections open for the whole run.
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;

server.listen(port, '127.0.0.1', () => {
  console.log(`backend ${name} listening on 127.0.0.1:${port}`);
});

function stop() { server.close(); process.exit(0); }
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
