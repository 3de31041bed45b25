// The first express app of the nginx walkthrough (shared/seed), as written
// there, except: it listens on 127.0.0.1 on the port in $PORT (tests pass 0,
// so the system chooses one) and prints it; $KEEPALIVE_MS sets Node's idle
// keep-alive timeout (default 5000 ms); /headers echoes the request headers.
const express = require('express');
const app = express();

app.get('/test1', (req, res) => {
  res.send('PORT 3000 /test1');
});
app.get('/test3', (req, res) => {
  res.send('PORT 3000 /test3');
});
app.get('/headers', (req, res) => {
  res.json(req.headers);
});
app.get('/', (req, res) => {
  res.send('PORT 3000');
});
const server = app.listen(Number(process.env.PORT || 3000), '127.0.0.1', () => {
  console.log('listening ' + server.address().port);
});
if (process.env.KEEPALIVE_MS) {
  server.keepAliveTimeout = Number(process.env.KEEPALIVE_MS);
}
