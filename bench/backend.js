'use strict';
// Tiny HTTP backend for the lbproxy benchmark (no npm packages).
//
// Usage: node backend.js PORT NAME
//   GET /        -> "PORT NAME\n"
//   GET /64k     -> 65536 bytes
//   POST /upload -> reads the whole body, answers with its length in bytes
// Listens on 127.0.0.1 only, keep-alive on.

const http = require('http');

const port = parseInt(process.argv[2], 10);
const name = process.argv[3] || String(port);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node backend.js PORT NAME');
  process.exit(2);
}

const small = Buffer.from(`PORT ${name}\n`);
const big = Buffer.alloc(64 * 1024, 'x');

function reply(res, status, body) {
  res.writeHead(status, {
    'Content-Type': 'text/plain',
    'Content-Length': body.length,
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/') {
    reply(res, 200, small);
  } else if (req.method === 'GET' && req.url === '/64k') {
    reply(res, 200, big);
  } else if (req.method === 'POST' && req.url === '/upload') {
    let length = 0;
    req.on('data', (chunk) => { length += chunk.length; });
    req.on('end', () => reply(res, 200, Buffer.from(`${length}\n`)));
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
