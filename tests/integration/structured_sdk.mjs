// Structured output through the official OpenAI Node SDK: chat.completions.parse()
// with a zod schema (zodResponseFormat), as applications write it, against a
// running inferd. Run by daemon_test.py (group structured): INFERD_URL, INFERD_MODEL.
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const here = path.dirname(new URL(import.meta.url).pathname);
const modules = path.join(here, '..', 'node', 'node_modules');
const OpenAI = require(path.join(modules, 'openai')).default;
const { zodResponseFormat } = require(path.join(modules, 'openai', 'helpers', 'zod'));
const { z } = require(path.join(modules, 'zod'));

const url = process.env.INFERD_URL;
const model = process.env.INFERD_MODEL;
if (!url || !model) {
  console.error('structured_sdk.mjs: INFERD_URL and INFERD_MODEL must be set');
  process.exit(2);
}

let failures = 0;
function check(cond, what) {
  if (!cond) {
    failures++;
    console.log('FAIL:', what);
  }
}

const client = new OpenAI({ baseURL: url + '/v1', apiKey: 'unused', maxRetries: 0 });

// zod emits $defs-free nested objects, enums, nullable (anyOf with null),
// arrays with minItems/maxItems and additionalProperties: false everywhere.
const Step = z.object({ explanation: z.string().max(20), output: z.string().max(10) });
const Answer = z.object({
  steps: z.array(Step).min(1).max(2),
  final: z.enum(['yes', 'no', 'maybe']),
  confidence: z.number().int().nullable(),
  done: z.boolean(),
});

for (const seed of [1, 2]) {
  const r = await client.beta.chat.completions.parse({
    model,
    messages: [{ role: 'user', content: 'Solve 2 + 2 step by step.' }],
    response_format: zodResponseFormat(Answer, 'answer'),
    max_tokens: 400,
    temperature: 0.8,
    seed,
  });
  const msg = r.choices[0].message;
  check(r.choices[0].finish_reason === 'stop', `seed ${seed}: finish_reason ${r.choices[0].finish_reason}: ${msg.content}`);
  check(msg.parsed !== null && typeof msg.parsed === 'object', `seed ${seed}: parsed is an object: ${msg.content}`);
  if (msg.parsed) {
    const again = Answer.safeParse(msg.parsed);
    check(again.success, `seed ${seed}: parsed output satisfies the zod schema: ${msg.content}`);
  }
}

// A schema the server cannot enforce is refused, not ignored.
try {
  await client.beta.chat.completions.parse({
    model,
    messages: [{ role: 'user', content: 'x' }],
    response_format: zodResponseFormat(z.object({ email: z.string().email() }), 'e'),
    max_tokens: 5,
  });
  check(false, 'an email-format schema must be refused');
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.status === 400 && /email/.test(e.message),
    'unsupported format: ' + e);
}

console.log(`structured_sdk ${model}: ${failures} failures`);
process.exit(failures ? 1 : 0);
