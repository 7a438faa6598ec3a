// A WebSocket client (the `ws` package) reaching a ws:// URL through an HTTP proxy
// with `http-proxy-agent`, which sends the handshake in absolute-form (no CONNECT).
// Usage: node ws_through_proxy.js WS_URL PROXY_URL MESSAGE; prints the echoed message.
const WebSocket = require("ws");
const { HttpProxyAgent } = require("http-proxy-agent");

const [url, proxy, message] = process.argv.slice(2);
const ws = new WebSocket(url, { agent: new HttpProxyAgent(proxy), handshakeTimeout: 5000 });
ws.on("open", () => ws.send(message));
ws.on("message", (data) => {
  console.log(String(data));
  ws.close();
});
ws.on("unexpected-response", (req, res) => {
  console.error(`handshake refused: ${res.statusCode}`);
  process.exit(3);
});
ws.on("error", (err) => {
  console.error(`error: ${err.message}`);
  process.exit(2);
});
