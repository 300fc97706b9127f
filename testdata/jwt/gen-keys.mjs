// Run once to (re)create the fixtures of src/identity/jwt.rs's unit tests: `node gen-keys.mjs`.
// trusted-*.key.pem sign tokens whose public halves are in jwks.json; attacker-*.key.pem sign
// forged tokens that reuse the trusted kids. Test keys only: never use them elsewhere.
import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import { writeFileSync } from 'node:fs';

const here = (p) => new URL(p, import.meta.url);
const keys = {
  'trusted-rs256': generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  'trusted-es256': generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  'attacker-rs256': generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  'attacker-es256': generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
};
for (const [name, key] of Object.entries(keys)) {
  writeFileSync(here(`./${name}.key.pem`), key.export({ type: 'pkcs8', format: 'pem' }));
}
const pub = (name, alg) => ({ ...createPublicKey(keys[name]).export({ format: 'jwk' }), kid: name, alg, use: 'sig' });
writeFileSync(here('./jwks.json'), JSON.stringify({ keys: [
  pub('trusted-rs256', 'RS256'),
  pub('trusted-es256', 'ES256'),
] }, null, 2) + '\n');
