// A Node.js client with a keep-alive agent (1 s keepalive probes) that never
// consumes its responses.
const http = require('http');

const agent = new http.Agent({ keepAlive: true });
let answered = 0;
for (let i = 0; i < 6; i++) {
  http.get(process.argv[2], { agent }, () => {
    answered += 1;
    if (answered === 6) console.log('ready');
  });
}
setInterval(() => {}, 1000);
