// LangChain JS (@langchain/openai ChatOpenAI) against a running inferd, as an
// agent framework drives it: bindTools() with a forced tool_choice (a named
// tool, and "any", which LangChain sends as "required"), then invoke() gives an
// AIMessage whose tool_calls follow the zod schema; withStructuredOutput(zod)
// by its default method (jsonSchema: response_format json_schema), by
// functionCalling (a named tool_choice) and by jsonMode (json_object). Every
// request body LangChain sends is recorded, and a 4xx reply is printed with the
// body, so a field inferd refuses is named. Run by daemon_test.py (group
// langchain): INFERD_URL, INFERD_MODEL.
import path from 'node:path';
import { createRequire } from 'node:module';

const here = path.dirname(new URL(import.meta.url).pathname);
// resolve packages from tests/node (its node_modules, package exports honoured)
const require = createRequire(path.join(here, '..', 'node', 'package.json'));
const { ChatOpenAI } = require('@langchain/openai');
const { tool } = require('@langchain/core/tools');
const { HumanMessage } = require('@langchain/core/messages');
const { z } = require('zod');

const url = process.env.INFERD_URL;
const model = process.env.INFERD_MODEL;
if (!url || !model) {
  console.error('langchain_test.mjs: INFERD_URL and INFERD_MODEL must be set');
  process.exit(2);
}
const versions = ['@langchain/openai', '@langchain/core']
  .map((p) => p + ' ' + require(p + '/package.json').version).join(', ');
console.log('langchain_test.mjs:', model, 'with', versions);

let failures = 0;
function check(cond, what) {
  if (!cond) {
    failures++;
    console.log('FAIL:', what);
  }
  return cond;
}

// Every request LangChain makes goes through here: its body is kept, and a
// refusal is printed whole (inferd names the field it refuses).
const sent = [];
async function recordingFetch(input, init) {
  const body = init && typeof init.body === 'string' ? JSON.parse(init.body) : null;
  sent.push(body);
  const r = await fetch(input, init);
  if (r.status >= 400) {
    const text = await r.clone().text();
    console.log('HTTP', r.status, 'for', JSON.stringify(body), '->', text);
  }
  return r;
}

function chat(seed) {
  return new ChatOpenAI({
    model,
    apiKey: 'unused',
    temperature: 0.8,
    maxTokens: 300,
    maxRetries: 0,
    modelKwargs: { seed },
    configuration: { baseURL: url + '/v1', fetch: recordingFetch },
  });
}

// Bounded strings and enums, so random weights close the JSON within max_tokens.
// No bounds on non-integer numbers: zod's .min()/.max() become JSON Schema
// minimum/maximum, which inferd's schema compiler takes only on .int() (type
// integer) and refuses on other numbers (a 400 for response_format; for a
// tool, arguments fall back to any JSON object, which random weights do not
// close).
const weatherSchema = z.object({
  city: z.string().max(12).describe('the city'),
  unit: z.enum(['celsius', 'fahrenheit']),
  days: z.number().int(),
});
const getWeather = tool(async (a) => JSON.stringify(a), {
  name: 'get_weather',
  description: 'Get the weather forecast for a city',
  schema: weatherSchema,
});
const timeSchema = z.object({ zone: z.enum(['UTC', 'CET', 'PST']) });
const getTime = tool(async (a) => JSON.stringify(a), {
  name: 'get_time',
  description: 'Get the time in a time zone',
  schema: timeSchema,
});

async function attempt(what, fn) {
  try {
    return await fn();
  } catch (e) {
    check(false, what + ' threw: ' + (e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : e));
    return undefined;
  }
}

const question = [new HumanMessage('What is the weather in Paris for the next 3 days?')];

// 1. tool calling with a named tool_choice, and with "any" (LangChain: "required")
for (const [label, choice, allowed] of [
  ['named get_weather', 'get_weather', ['get_weather']],
  ['named get_time', 'get_time', ['get_time']],
  ['any', 'any', ['get_weather', 'get_time']],
  ['required', 'required', ['get_weather', 'get_time']],
]) {
  for (const seed of [1, 2]) {
    const what = `${model} bindTools tool_choice ${label} seed ${seed}`;
    const n = sent.length;
    const msg = await attempt(what, () => chat(seed).bindTools([getWeather, getTime], { tool_choice: choice }).invoke(question));
    if (!msg) continue;
    const body = sent[n];
    if (body && seed === 1) console.log(`${label}: LangChain sent tool_choice ${JSON.stringify(body.tool_choice)}, fields ${Object.keys(body).sort().join(',')}`);
    if (!check(Array.isArray(msg.tool_calls) && msg.tool_calls.length >= 1, `${what}: AIMessage has tool_calls (${JSON.stringify(msg.tool_calls)}, content ${JSON.stringify(msg.content)}, invalid ${JSON.stringify(msg.invalid_tool_calls)})`)) continue;
    for (const tc of msg.tool_calls) {
      check(allowed.includes(tc.name), `${what}: tool name ${tc.name} is one of ${allowed}`);
      const schema = tc.name === 'get_time' ? timeSchema : weatherSchema;
      const p = schema.strict().safeParse(tc.args);
      check(p.success, `${what}: args ${JSON.stringify(tc.args)} follow the ${tc.name} schema: ${p.success ? '' : p.error.message}`);
      check(typeof tc.id === 'string' && tc.id.length > 0, `${what}: tool call has an id`);
    }
    check((msg.invalid_tool_calls || []).length === 0, `${what}: no invalid_tool_calls (${JSON.stringify(msg.invalid_tool_calls)})`);
    // a named tool is exactly one call; "required" lets the grammar go on calling,
    // which random weights may do until max_tokens (docs/http-api.md): complete
    // calls before the cut are returned
    const fin = msg.response_metadata && msg.response_metadata.finish_reason;
    if (allowed.length === 1) {
      check(msg.tool_calls.length === 1, `${what}: exactly one call (${msg.tool_calls.length})`);
      check(fin === 'tool_calls', `${what}: finish_reason tool_calls (${fin})`);
    } else {
      check(fin === 'tool_calls' || fin === 'length', `${what}: finish_reason tool_calls or length (${fin})`);
    }
  }
}

// 2. withStructuredOutput(zod): the default method, jsonSchema, functionCalling, jsonMode
const Answer = z.object({
  answer: z.enum(['yes', 'no', 'maybe']),
  reason: z.string().max(20),
  score: z.number().int(),
  tags: z.array(z.enum(['math', 'logic', 'other'])).min(1).max(2),
});
for (const method of [undefined, 'jsonSchema', 'functionCalling', 'jsonMode']) {
  for (const seed of [1, 2]) {
    const what = `${model} withStructuredOutput method ${method || '(default)'} seed ${seed}`;
    const n = sent.length;
    const opts = method ? { name: 'answer', method } : { name: 'answer' };
    const messages = method === 'jsonMode'
      // jsonMode only forces a JSON object; the schema is in the prompt as LangChain advises
      ? [new HumanMessage('Is 2 + 2 = 4? Reply in JSON with keys answer, reason, score, tags.')]
      : [new HumanMessage('Is 2 + 2 = 4?')];
    if (method === 'jsonMode') {
      // json_object bounds nothing, and random weights cannot be asked to follow a
      // prompt: the request must be accepted, and a reply that stopped by itself
      // parses to a JSON object (one cut at max_tokens is random weights' long key)
      const loose = z.object({}).passthrough();
      const r = await attempt(what, () => chat(seed).withStructuredOutput(loose, { ...opts, includeRaw: true }).invoke(messages));
      const body = sent[n];
      if (body && seed === 1) console.log(`jsonMode: LangChain sent response_format ${JSON.stringify(body.response_format)}`);
      if (!r) continue;
      const fin = r.raw && r.raw.response_metadata && r.raw.response_metadata.finish_reason;
      check(fin === 'stop' || fin === 'length', `${what}: finish_reason stop or length (${fin})`);
      if (fin === 'stop') check(r.parsed && typeof r.parsed === 'object' && !Array.isArray(r.parsed), `${what}: a JSON object (${JSON.stringify(r.parsed)})`);
      else console.log(`${what}: cut at max_tokens (random weights), not parsed`);
      continue;
    }
    const r = await attempt(what, () => chat(seed).withStructuredOutput(Answer, { ...opts, includeRaw: true }).invoke(messages));
    const body = sent[n];
    if (body && seed === 1) {
      console.log(`${method || 'default'}: LangChain sent fields ${Object.keys(body).sort().join(',')}; ` +
        (body.response_format ? `response_format type ${body.response_format.type}` : `tool_choice ${JSON.stringify(body.tool_choice)}`));
    }
    if (!r) continue;
    if (method === undefined) check(body && body.response_format && body.response_format.type === 'json_schema', `${what}: the default method sends response_format json_schema`);
    if (method === 'functionCalling') check(body && body.tool_choice && body.tool_choice.function && body.tool_choice.function.name === 'answer', `${what}: functionCalling sends a named tool_choice`);
    check(!r.parsingError, `${what}: no parsing error (${r.parsingError}; raw ${JSON.stringify(r.raw && (r.raw.content || r.raw.tool_calls))})`);
    const p = Answer.strict().safeParse(r.parsed);
    check(p.success, `${what}: ${JSON.stringify(r.parsed)} is valid under the zod schema: ${p.success ? '' : p.error.message}`);
  }
}

// 3. streaming a forced tool call: the chunks concatenate to one valid call
{
  const what = `${model} stream bindTools tool_choice get_weather`;
  const msg = await attempt(what, async () => {
    let acc;
    for await (const chunk of await chat(3).bindTools([getWeather], { tool_choice: 'get_weather' }).stream(question)) {
      acc = acc === undefined ? chunk : acc.concat(chunk);
    }
    return acc;
  });
  if (msg && check(msg.tool_calls && msg.tool_calls.length === 1, `${what}: one tool call (${JSON.stringify(msg.tool_calls)})`)) {
    const p = weatherSchema.strict().safeParse(msg.tool_calls[0].args);
    check(msg.tool_calls[0].name === 'get_weather' && p.success, `${what}: ${JSON.stringify(msg.tool_calls[0])} follows the schema`);
  }
}

console.log(`langchain_test.mjs ${model}: ${sent.length} requests, ${failures} failures`);
process.exit(failures ? 1 : 0);
