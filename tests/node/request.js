// One HTTPS request through a proxy with Node's https module and https-proxy-agent.
// usage: node request.js PROXY_URL METHOD URL BODY HEADER_NAME HEADER_VALUE
// Prints {"status": ..., "body": ...} on success; exits 1 with the error's code otherwise.
// The CA to trust comes from NODE_EXTRA_CA_CERTS, as a user would set it.
"use strict";
const https = require("https");
const { HttpsProxyAgent } = require("https-proxy-agent");

const [proxy, method, url, body, headerName, headerValue] = process.argv.slice(2);
const req = https.request(url, {
  method,
  agent: new HttpsProxyAgent(proxy),
  headers: { [headerName]: headerValue, "Content-Length": Buffer.byteLength(body) },
  timeout: 10000,
}, (res) => {
  const chunks = [];
  res.on("data", (chunk) => chunks.push(chunk));
  res.on("end", () => {
    process.stdout.write(JSON.stringify({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
  });
});
req.on("timeout", () => req.destroy(new Error("timeout")));
req.on("error", (err) => {
  process.stderr.write(`${err.code || ""} ${err.message}\n`);
  process.exit(1);
});
req.end(body);
