// The official OpenAI Node SDK's embeddings.create against a running inferd
// (daemon_test.py group embeddings): INFERD_URL, INFERD_API_KEY, and
// INFERD_EXPECT (a JSON array: the float vector inferd returned for "Hello"
// with encoding_format "float", which the SDK's default base64 must equal).
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const here = path.dirname(new URL(import.meta.url).pathname);
const OpenAI = require(path.join(here, '..', 'node', 'node_modules', 'openai')).default;

let failures = 0;
function check(cond, what) {
  if (!cond) {
    failures++;
    console.log('FAIL:', what);
  }
}

const client = new OpenAI({ baseURL: process.env.INFERD_URL + '/v1', apiKey: process.env.INFERD_API_KEY });
const expect = JSON.parse(process.env.INFERD_EXPECT);
// The SDK asks for base64 unless told otherwise and decodes it itself.
const r = await client.embeddings.create({ model: 'tinystories-656k', input: ['Hello', 'Once upon a time'] });
check(r.object === 'list' && r.data.length === 2, `list of two: ${JSON.stringify(r).slice(0, 200)}`);
check(r.data[0].index === 0 && r.data[1].index === 1, 'indexes in input order');
const v = r.data[0].embedding;
check(Array.isArray(v) && v.length === expect.length, `dimension ${v.length}, want ${expect.length}`);
// "%.9g" round-trips a float32: the decimal, rounded to float32, is the base64 value.
check(v.every((x, i) => x === Math.fround(expect[i])), 'base64 decodes to the float answer exactly');
check(r.usage.prompt_tokens > 0 && r.usage.total_tokens === r.usage.prompt_tokens, `usage ${JSON.stringify(r.usage)}`);
const f = await client.embeddings.create({ model: 'tinystories-656k', input: 'Hello', encoding_format: 'float' });
check(f.data[0].embedding.every((x, i) => x === expect[i]), 'float answer through the SDK');
try {
  await client.embeddings.create({ model: 'tinystories-656k', input: 'Hello', dimensions: 8 });
  check(false, 'dimensions must be refused');
} catch (e) {
  check(e.status === 400 && /dimensions/.test(e.message), `dimensions refused by name: ${e.status} ${e.message}`);
}
console.log(`openai_embeddings: ${failures} failures`);
process.exit(failures ? 1 : 0);
