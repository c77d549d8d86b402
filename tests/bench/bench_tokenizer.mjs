// bench_tokenizer.mjs - the same measurement as bench_tokenizer.c with the
// npm `tokenizers` package (Hugging Face's Rust core): the whole corpus as one
// string, encode(add_special_tokens=false) in a loop, single thread
// (run with RAYON_NUM_THREADS=1 RAYON_RS_NUM_CPUS=1).
// Mode "lines" encodes each line as its own string instead (many short calls).
// usage: node bench_tokenizer.mjs TOKENIZERS_MODULE_DIR TOKENIZER.json CORPUS [SECONDS] [whole|lines]
import { createRequire } from 'module';
import { readFileSync } from 'fs';
const [,, modDir, tokPath, corpusPath, secs = '3', mode = 'whole'] = process.argv;
const require = createRequire(modDir + '/');
const { Tokenizer } = require('tokenizers');
const t0 = performance.now();
const tok = Tokenizer.fromFile(tokPath);
const loadS = (performance.now() - t0) / 1000;
const text = readFileSync(corpusPath, 'utf8');
const bytes = Buffer.byteLength(text, 'utf8');
// lines keep their '\n', as the C side cuts them
const parts = mode === 'lines' ? text.split(/(?<=\n)/) : [text];
let iters = 0, total = 0, best = 1e30, ntok = 0;
while (total < Number(secs) || iters < 3) {
  const a = performance.now();
  let n = 0;
  for (const part of parts) {
    const enc = await tok.encode(part, null, { addSpecialTokens: false });
    n += enc.getIds().length;
  }
  const d = (performance.now() - a) / 1000;
  ntok = n;
  total += d; best = Math.min(best, d); iters++;
}
console.log(JSON.stringify({ impl: 'hf-tokenizers', mode, tokenizer: tokPath, bytes, tokens: ntok, iters,
  mean_mb_s: +(bytes / 1e6 / (total / iters)).toFixed(2), best_mb_s: +(bytes / 1e6 / best).toFixed(2),
  load_s: +loadS.toFixed(3) }));
