// Many rooms on one instance: CONNS connections each subscribe to the
// presence of ROOMS_PER_CONN rooms of their own (so an instance on Redis
// holds CONNS x ROOMS_PER_CONN room channels), then a bystander makes 200
// round trips; prints the set-up time and the bystander's p50 / p99, then
// keeps everything open for 4 s so the server's RSS and Redis can be read.
// Uses Node's built-in WebSocket (Node 20: --experimental-websocket):
//   node --experimental-websocket scripts/bench-rooms.mjs ws://127.0.0.1:3000 157 64
const [url, conns, per] = [process.argv[2], +process.argv[3], +process.argv[4]];
const open = [];
function connect() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let id = 0; const waiting = new Map();
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      if (f.command === 'ping') ws.send('{"command":"pong","payload":{}}');
      if (f.command === 'mesh/assign-id') resolve({ ws, req });
      if (f.id !== undefined && waiting.has(f.id)) { waiting.get(f.id)(f.payload); waiting.delete(f.id); }
    };
    ws.onerror = reject;
    function req(command, payload) {
      return new Promise((res) => { const i = ++id; waiting.set(i, res); ws.send(JSON.stringify({ id: i, command, payload })); });
    }
  });
}
const t0 = performance.now();
for (let c = 0; c < conns; c++) {
  const k = await connect(); open.push(k);
  await Promise.all(Array.from({ length: per }, (_, r) => k.req('mesh/subscribe-presence', { roomName: `r${c}-${r}` })));
}
const setup = performance.now() - t0;
// A bystander's round trips while all that interest exists.
const by = await connect(); const lat = [];
for (let i = 0; i < 200; i++) { const t = performance.now(); await by.req('mesh/get-presence-state', { roomName: 'r0-0' }); lat.push(performance.now() - t); }
lat.sort((a, b) => a - b);
console.log(JSON.stringify({ rooms: conns * per, setup_s: +(setup / 1000).toFixed(2), p50_ms: +lat[100].toFixed(2), p99_ms: +lat[197].toFixed(2) }));
console.log('ready'); await new Promise((r) => setTimeout(r, 4000)); process.exit(0);
