// The official OpenAI Node SDK against a running inferd serving qwen3-tiny-random.
// Run by daemon_test.py (group openai_sdk): INFERD_URL, INFERD_API_KEY, INFERD_SHARED.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const here = path.dirname(new URL(import.meta.url).pathname);
const OpenAI = require(path.join(here, '..', 'node', 'node_modules', 'openai')).default;

const url = process.env.INFERD_URL;
const key = process.env.INFERD_API_KEY;
const shared = process.env.INFERD_SHARED;
if (!url || !key || !shared) {
  console.error('openai_sdk.mjs: INFERD_URL, INFERD_API_KEY and INFERD_SHARED must be set');
  process.exit(2);
}

let failures = 0;
function check(cond, what) {
  if (!cond) {
    failures++;
    console.log('FAIL:', what);
  }
}

const goldens = fs.readFileSync(path.join(shared, 'golden', 'models.jsonl'), 'utf8')
  .split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l))
  .filter((g) => g.model === 'qwen3-tiny-random');

const client = new OpenAI({ baseURL: url + '/v1', apiKey: key, maxRetries: 0 });

const models = await client.models.list();
check(models.data.some((m) => m.id === 'qwen3-tiny-random'), 'models.list has the served model: ' + JSON.stringify(models.data));

for (const g of goldens) {
  const messages = [];
  if (g.prompt.system) messages.push({ role: 'system', content: g.prompt.system });
  messages.push({ role: 'user', content: g.prompt.user });
  const n = g.stable_prefix_len;
  const want = g.stable_completion_text;

  const r = await client.chat.completions.create({ model: 'qwen3-tiny-random', messages, max_tokens: n, temperature: 0 });
  check(r.choices[0].message.content === want, `chat ${g.name} non-streaming: ${JSON.stringify(r.choices[0].message.content)}`);
  check(r.choices[0].finish_reason === 'length', `chat ${g.name} finish_reason ${r.choices[0].finish_reason}`);
  check(r.usage.prompt_tokens === g.prompt_ids.length && r.usage.completion_tokens === n, `chat ${g.name} usage ${JSON.stringify(r.usage)}`);

  const stream = await client.chat.completions.create({
    model: 'qwen3-tiny-random', messages, max_tokens: n, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  let role = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  check(role === 'assistant', `chat ${g.name} stream role ${role}`);
  check(text === want, `chat ${g.name} streaming: ${JSON.stringify(text)}`);
  check(finish === 'length', `chat ${g.name} stream finish_reason ${finish}`);
  check(usage && usage.completion_tokens === n, `chat ${g.name} stream usage ${JSON.stringify(usage)}`);

  // The same prompt as token ids through the completions API.
  const c = await client.completions.create({ model: 'qwen3-tiny-random', prompt: g.prompt_ids, max_tokens: n, temperature: 0 });
  check(c.choices[0].text === want, `completion ${g.name}: ${JSON.stringify(c.choices[0].text)}`);
  const cs = await client.completions.create({ model: 'qwen3-tiny-random', prompt: g.prompt_ids, max_tokens: n, temperature: 0, stream: true });
  let ctext = '';
  for await (const chunk of cs) ctext += chunk.choices[0]?.text ?? '';
  check(ctext === want, `completion ${g.name} streaming: ${JSON.stringify(ctext)}`);
}

// prefix_cache: a chat's second turn, which repeats the first, keeps the
// cache the first left: the SDK reads usage.prompt_tokens_details.
{
  const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
  const first = await client.chat.completions.create({ model: 'qwen3-tiny-random', messages, max_tokens: 8, temperature: 0 });
  messages.push({ role: 'assistant', content: first.choices[0].message.content }, { role: 'user', content: 'And tomorrow?' });
  const r = await client.chat.completions.create({ model: 'qwen3-tiny-random', messages, max_tokens: 8, temperature: 0 });
  check(r.usage.prompt_tokens_details?.cached_tokens > 0 && r.usage.prompt_tokens_details.cached_tokens < r.usage.prompt_tokens,
    'second turn: cached_tokens ' + JSON.stringify(r.usage));
  messages.push({ role: 'assistant', content: r.choices[0].message.content }, { role: 'user', content: 'Thanks' });
  const stream = await client.chat.completions.create({ model: 'qwen3-tiny-random', messages, max_tokens: 8, temperature: 0,
    stream: true, stream_options: { include_usage: true } });
  let usage = null;
  for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
  check(usage?.prompt_tokens_details?.cached_tokens > r.usage.prompt_tokens_details?.cached_tokens,
    'third turn, streamed: more cached than the second: ' + JSON.stringify(usage));
}

// Errors surface as the SDK's typed errors with the server's status and message.
try {
  await client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] });
  check(false, 'unknown model must throw');
} catch (e) {
  check(e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found', 'unknown model: ' + e);
}
try {
  await client.chat.completions.create({ model: 'qwen3-tiny-random', messages: [] });
  check(false, 'empty messages must throw');
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'messages', 'empty messages: ' + e);
}
try {
  const bad = new OpenAI({ baseURL: url + '/v1', apiKey: 'wrong-key', maxRetries: 0 });
  await bad.models.list();
  check(false, 'wrong key must throw');
} catch (e) {
  check(e instanceof OpenAI.AuthenticationError && e.status === 401, 'wrong key: ' + e);
}

// Tools (issue 13): requests with tools, tool results and assistant tool
// calls are accepted, and the response is a valid chat message: content or
// tool_calls (random weights rarely emit a call; either shape must be whole).
const tools = [{
  type: 'function',
  function: {
    name: 'get_weather', description: 'Weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
}];
const toolTurns = [
  { role: 'user', content: 'Weather in Paris?' },
  { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
  { role: 'tool', tool_call_id: 'call_1', content: 'sunny' },
];
function validMessage(m, what) {
  check(m.role === 'assistant', `${what}: role ${m.role}`);
  const calls = m.tool_calls ?? [];
  check(typeof m.content === 'string' || calls.length > 0, `${what}: content or tool_calls: ${JSON.stringify(m)}`);
  for (const c of calls) {
    check(c.type === 'function' && c.id.startsWith('call_') && typeof c.function.name === 'string', `${what}: call ${JSON.stringify(c)}`);
    let ok = true;
    try { JSON.parse(c.function.arguments); } catch { ok = false; }
    check(ok, `${what}: arguments are a JSON string: ${c.function.arguments}`);
  }
}
{
  const r = await client.chat.completions.create({ model: 'qwen3-tiny-random', messages: toolTurns, tools, max_tokens: 8, temperature: 0 });
  validMessage(r.choices[0].message, 'tools non-stream');
  const fr = r.choices[0].finish_reason;
  check(fr === (r.choices[0].message.tool_calls?.length ? 'tool_calls' : 'length') || fr === 'stop', `tools finish_reason ${fr}`);

  // Streaming: the SDK's own accumulator rebuilds the same message.
  const stream = client.beta.chat.completions.stream({ model: 'qwen3-tiny-random', messages: toolTurns, tools, max_tokens: 8, temperature: 0 });
  const final = await stream.finalChatCompletion();
  validMessage(final.choices[0].message, 'tools stream');
  check(final.choices[0].message.content === r.choices[0].message.content,
    `tools stream content ${JSON.stringify(final.choices[0].message.content)} == non-stream ${JSON.stringify(r.choices[0].message.content)}`);

  const none = await client.chat.completions.create({ model: 'qwen3-tiny-random', messages: toolTurns, tools, tool_choice: 'none', max_tokens: 4 });
  validMessage(none.choices[0].message, 'tool_choice none');
  check(!none.choices[0].message.tool_calls, 'tool_choice none: no calls');

  const think = await client.chat.completions.create({
    model: 'qwen3-tiny-random', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4,
    chat_template_kwargs: { enable_thinking: false },
  });
  validMessage(think.choices[0].message, 'chat_template_kwargs');
}
{
  // A named function is enforced by constrained decoding: a call, whatever the weights.
  const units = {
    type: 'function',
    function: { name: 'set_units', parameters: { type: 'object', properties: { units: { type: 'string', enum: ['metric', 'imperial'] } },
      required: ['units'], additionalProperties: false } },
  };
  const r = await client.chat.completions.create({ model: 'qwen3-tiny-random', messages: toolTurns.slice(0, 1),
    tools: [...tools, units], tool_choice: { type: 'function', function: { name: 'set_units' } }, max_tokens: 64, temperature: 0 });
  const calls = r.choices[0].message.tool_calls ?? [];
  check(calls.length === 1 && calls[0].function.name === 'set_units' && r.choices[0].finish_reason === 'tool_calls',
    'named tool_choice: ' + JSON.stringify(r.choices[0]));
  validMessage(r.choices[0].message, 'named tool_choice');
  check(calls.length === 1 && ['metric', 'imperial'].includes(JSON.parse(calls[0].function.arguments).units),
    'arguments follow the schema: ' + JSON.stringify(calls));
}
// Issue 13 parts 3 and 6 through the SDK: n, logit_bias, echo, and a field
// inferd does not implement refused by name rather than ignored.
{
  const g = goldens[0];
  const r = await client.chat.completions.create({ model: 'qwen3-tiny-random', messages: [{ role: 'user', content: g.prompt.user }],
    n: 2, max_tokens: 4, temperature: 0, logit_bias: { 100: 100 } });
  check(r.choices.length === 2 && r.choices[1].index === 1, 'n: 2 choices: ' + JSON.stringify(r.choices));
  check(r.choices.every((c) => c.message.content === r.choices[0].message.content), 'greedy choices are equal');
  const forced = (await client.completions.create({ model: 'qwen3-tiny-random', prompt: g.prompt_ids, max_tokens: 3,
    temperature: 0, logprobs: 0, logit_bias: { 100: 100 } })).choices[0];
  const name = (await (await fetch(url + '/detokenize', { method: 'POST', headers: { Authorization: 'Bearer ' + key },
    body: JSON.stringify({ tokens: [100] }) })).json()).content;
  check(forced.logprobs.tokens.every((t) => t === name), 'logit_bias +100 forces token 100: ' + JSON.stringify(forced.logprobs.tokens));
  const e = (await client.completions.create({ model: 'qwen3-tiny-random', prompt: g.prompt_ids, max_tokens: 0, echo: true,
    logprobs: 1 })).choices[0];
  check(e.logprobs.token_logprobs.length === g.prompt_ids.length && e.logprobs.token_logprobs[0] === null,
    'echo with max_tokens 0: a logprob per prompt token, the first null: ' + JSON.stringify(e.logprobs.token_logprobs));
  try {
    await client.chat.completions.create({ model: 'qwen3-tiny-random', messages: [{ role: 'user', content: 'x' }],
      prediction: { type: 'content', content: 'x' } });
    check(false, 'prediction must throw');
  } catch (err) {
    check(err instanceof OpenAI.BadRequestError && err.param === 'prediction' && /not supported by inferd/.test(err.message),
      'unimplemented field refused by name: ' + err);
  }
}

console.log(`openai_sdk: ${failures} failures`);
process.exit(failures ? 1 : 0);
