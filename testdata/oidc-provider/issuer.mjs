// A real OpenID provider (panva/oidc-provider) for the JWT tests: client_credentials grants that
// return JWT access tokens (RFC 9068) whose `aud` is chosen by the `resource` parameter.
//
// env: OIDC_PORT (default 18443; 0 = a free port, see the "ready" line)
//      OIDC_TLS_CERT, OIDC_TLS_KEY  PEM paths of the server certificate and key (the tests make
//                                   them with rcgen at run time); without both, plain http
//      OIDC_ISSUER   override the issuer string (default: scheme://127.0.0.1:<port>)
//      OIDC_AT_ALG   RS256 (default) | ES256: how access tokens are signed
//      OIDC_CLIENTS  JSON array of clients replacing the default one (`attributes` allowed)
// Listens on 127.0.0.1 only. Prints one line when ready:
//   oidc-provider ready: issuer=<url> pid=<pid> startup_ms=<n>
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { performance } from 'node:perf_hooks';
import { Provider, errors } from 'oidc-provider';

const here = (p) => new URL(p, import.meta.url);
const PORT = Number(process.env.OIDC_PORT ?? 18443);
const CERT = process.env.OIDC_TLS_CERT;
const KEY = process.env.OIDC_TLS_KEY;
if (Boolean(CERT) !== Boolean(KEY)) {
  console.error('set both OIDC_TLS_CERT and OIDC_TLS_KEY, or neither (plain http)');
  process.exit(2);
}
const TLS = Boolean(CERT);
const HOST = '127.0.0.1';
const AT_ALG = process.env.OIDC_AT_ALG ?? 'RS256';
const jwks = JSON.parse(readFileSync(here('./jwks.private.json'), 'utf8'));

// resource indicator (an absolute URI) -> the string put into the JWT `aud`.
// `urn:audience:<x>` gives `aud: "<x>"`, so a test can ask for any audience (a plane UID).
const RESOURCES = { 'urn:onboarding-plane:uid-123': 'onboarding-plane-uid-123' };
const DEFAULT_RESOURCE = 'urn:onboarding-plane:uid-123';

// listen first so that OIDC_PORT=0 works: the issuer URL must carry the real port
const server = TLS
  ? https.createServer({ key: readFileSync(KEY), cert: readFileSync(CERT) })
  : http.createServer();
await new Promise((resolve) => server.listen(PORT, HOST, resolve));
const ISSUER = process.env.OIDC_ISSUER ?? `${TLS ? 'https' : 'http'}://${HOST}:${server.address().port}`;

const provider = new Provider(ISSUER, {
  jwks,
  clients: process.env.OIDC_CLIENTS ? JSON.parse(process.env.OIDC_CLIENTS) : [{
    client_id: 'vm-0001',
    client_secret: 'vm-0001-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    attributes: { region: 'us-east' },
  }],
  extraClientMetadata: { properties: ['attributes'] },
  ttl: { ClientCredentials: 600 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf ?? DEFAULT_RESOURCE,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => {
        const audience = RESOURCES[resourceIndicator]
          ?? (resourceIndicator.startsWith('urn:audience:') ? resourceIndicator.slice(13) : undefined);
        if (!audience) throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        return { scope: 'onboard', audience, accessTokenFormat: 'jwt', accessTokenTTL: 600,
                 jwt: { sign: { alg: AT_ALG } } };
      },
    },
  },
  extraTokenClaims: async (ctx, token) => {
    if (token.kind !== 'ClientCredentials') return undefined;
    const client = ctx.oidc.client ?? await ctx.oidc.provider.Client.find(token.clientId);
    return client?.attributes ? { attributes: client.attributes } : undefined;
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message));

server.on('request', provider.callback());
console.log(`oidc-provider ready: issuer=${ISSUER} pid=${process.pid} startup_ms=${performance.now().toFixed(0)}`);
