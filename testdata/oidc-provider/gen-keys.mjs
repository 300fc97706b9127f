// Run once to (re)create jwks.private.json: `node gen-keys.mjs`. The keys are test fixtures:
// fixed so that kids and the published JWKS stay the same between runs. Never use them elsewhere.
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
writeFileSync(new URL('./jwks.private.json', import.meta.url), JSON.stringify({ keys: [
  { ...rsa, kid: 'test-rs256', alg: 'RS256', use: 'sig' },
  { ...ec, kid: 'test-es256', alg: 'ES256', use: 'sig' },
] }, null, 2) + '\n');
