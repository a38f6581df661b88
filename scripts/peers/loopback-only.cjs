// Preload for third-party Node servers that have no "host" option (server-everything listens on
// every interface). Loaded with `node -r scripts/peers/loopback-only.cjs ...`, it rewrites
// `listen(port[, cb])` calls that name no host to bind 127.0.0.1 only, and reports the port that
// was actually bound (PORT=0 -> an ephemeral port) on stderr as
//   [loopback-only] listening on 127.0.0.1:<port>
// Our own code, used only by the test scripts.
'use strict';
const net = require('net');
const origListen = net.Server.prototype.listen;
net.Server.prototype.listen = function patchedListen(...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    if (first.path === undefined) args[0] = { ...first, host: '127.0.0.1' };
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1');
    else args[1] = '127.0.0.1';
  }
  this.once('listening', () => {
    const a = this.address();
    if (a && typeof a === 'object') process.stderr.write(`[loopback-only] listening on ${a.address}:${a.port}\n`);
  });
  return origListen.apply(this, args);
};
