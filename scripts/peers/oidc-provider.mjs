// A real OpenID Connect provider for the gateway's OIDC tests: the npm `oidc-provider` (installed
// by scripts/install-peers.sh into .mcp-peers/npm), configured here to issue RS256-signed JWT
// access tokens with the client-credentials grant and RFC 8707 resource indicators, so that a
// token's `aud` is the resource the client asked for (the gateway's `/mcp` or `/mcp/{server}`).
//
// Usage: node oidc-provider.mjs   (Node 22; listens on 127.0.0.1 on a free port)
//   stdout, first line: {"issuer":"http://127.0.0.1:<port>","kid":"<signing key id>"}
//
// Environment:
//   OIDC_PROVIDER_MODULES  node_modules folder holding oidc-provider (default
//                          <repo>/.mcp-peers/npm/node_modules, or $PORTCULLIS_PEERS/npm/node_modules)
//   OIDC_CLIENTS           JSON list of clients: [{"client_id","client_secret","roles":[...]}];
//                          every client may use the client_credentials grant and the scopes
//                          `mcp:tools` and `mcp:admin`. `roles` become the tokens' `roles` claim.
//   OIDC_TOKEN_TTL         access token lifetime in seconds (default 300)
//
// Test-only endpoints next to the provider's own (loopback only; this script is test code):
//   GET  /__test/stats           {"jwks_requests": n}: how often the JWKS was fetched
//   POST /__test/rotate          new signing key; the JWKS then holds the new and the old key
//   POST /__test/sign            body {"header":{...},"payload":{...}}: a JWS signed RS256 with the
//                                provider's current private key (header fields are kept; `alg`
//                                defaults to RS256 and `kid` to the current key), for tests of
//                                claims the provider would never issue (expired, wrong issuer, ...)
//   GET  /__test/public-key.pem  the current signing key's public half as SPKI PEM

import crypto from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const modules =
  process.env.OIDC_PROVIDER_MODULES ||
  path.join(process.env.PORTCULLIS_PEERS || path.join(here, '..', '..', '.mcp-peers'), 'npm', 'node_modules');
const { default: Provider } = await import(
  pathToFileURL(path.join(modules, 'oidc-provider', 'lib', 'index.js')).href
);

const clients = JSON.parse(
  process.env.OIDC_CLIENTS ||
    '[{"client_id":"support-bot","client_secret":"support-secret","roles":["support"]}]',
);
const tokenTtl = Number(process.env.OIDC_TOKEN_TTL || 300);
const rolesByClient = new Map(clients.map((c) => [c.client_id, c.roles || []]));

/** A fresh RS256 key pair as private JWK with a random kid. */
function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}

let keys = [newKey()]; // keys[0] signs; older keys stay published after a rotation
let provider;
let jwksRequests = 0;

function buildProvider(issuer) {
  const signingKid = keys[0].kid;
  const p = new Provider(issuer, {
    clients: clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'mcp:tools mcp:admin',
    })),
    scopes: ['mcp:tools', 'mcp:admin'],
    jwks: { keys },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (_ctx, resource) => ({
          scope: 'mcp:tools mcp:admin',
          audience: resource,
          accessTokenTTL: tokenTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256', kid: signingKid } },
        }),
      },
    },
    extraTokenClaims: (_ctx, token) => {
      const roles = rolesByClient.get(token.clientId);
      return roles && roles.length ? { roles } : undefined;
    },
  });
  p.on('server_error', (_ctx, error) => process.stderr.write(`[oidc-provider] ${error.stack}\n`));
  return p;
}

function base64url(data) {
  return Buffer.from(data).toString('base64url');
}

function sign(header, payload) {
  const fullHeader = { alg: 'RS256', kid: keys[0].kid, ...header };
  const input = `${base64url(JSON.stringify(fullHeader))}.${base64url(JSON.stringify(payload))}`;
  const key = crypto.createPrivateKey({ key: keys[0], format: 'jwk' });
  return `${input}.${crypto.sign('sha256', Buffer.from(input), key).toString('base64url')}`;
}

function reply(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'content-type': type });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > 65536) reject(new Error('body too large'));
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function testEndpoint(req, res, issuer) {
  const url = new URL(req.url, issuer);
  if (req.method === 'GET' && url.pathname === '/__test/stats') {
    return reply(res, 200, { jwks_requests: jwksRequests });
  }
  if (req.method === 'POST' && url.pathname === '/__test/rotate') {
    keys = [newKey(), ...keys];
    provider = buildProvider(issuer);
    return reply(res, 200, { kid: keys[0].kid });
  }
  if (req.method === 'POST' && url.pathname === '/__test/sign') {
    const { header = {}, payload } = JSON.parse(await readBody(req));
    return reply(res, 200, { token: sign(header, payload) });
  }
  if (req.method === 'GET' && url.pathname === '/__test/public-key.pem') {
    const pem = crypto
      .createPublicKey({ key: keys[0], format: 'jwk' })
      .export({ type: 'spki', format: 'pem' });
    return reply(res, 200, pem, 'application/x-pem-file');
  }
  return reply(res, 404, { error: 'unknown test endpoint' });
}

const server = http.createServer((req, res) => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  if (req.url.startsWith('/__test/')) {
    testEndpoint(req, res, issuer).catch((error) => reply(res, 400, { error: String(error) }));
    return;
  }
  if (req.url.split('?')[0] === '/jwks') jwksRequests += 1;
  provider.callback()(req, res);
});

server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = buildProvider(issuer);
  process.stdout.write(`${JSON.stringify({ issuer, kid: keys[0].kid })}\n`);
});

// The test harness closes stdin (or kills us) when it is done.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
