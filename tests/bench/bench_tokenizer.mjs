// bench_tokenizer.mjs - the same measurement as bench_tokenizer.c with the
// npm `tokenizers` package (Hugging Face's Rust core): the whole corpus as one
// string, encode(add_special_tokens=false) in a loop, single thread
// (run with RAYON_NUM_THREADS=1 RAYON_RS_NUM_CPUS=1).
// usage: node bench_tokenizer.mjs TOKENIZERS_MODULE_DIR TOKENIZER.json CORPUS [SECONDS]
import { createRequire } from 'module';
import { readFileSync } from 'fs';
const [,, modDir, tokPath, corpusPath, secs = '3'] = process.argv;
const require = createRequire(modDir + '/');
const { Tokenizer } = require('tokenizers');
const t0 = performance.now();
const tok = Tokenizer.fromFile(tokPath);
const loadS = (performance.now() - t0) / 1000;
const text = readFileSync(corpusPath, 'utf8');
const bytes = Buffer.byteLength(text, 'utf8');
let iters = 0, total = 0, best = 1e30, ntok = 0;
while (total < Number(secs) || iters < 3) {
  const a = performance.now();
  const enc = await tok.encode(text, null, { addSpecialTokens: false });
  const d = (performance.now() - a) / 1000;
  ntok = enc.getIds().length;
  total += d; best = Math.min(best, d); iters++;
}
console.log(JSON.stringify({ impl: 'hf-tokenizers', tokenizer: tokPath, bytes, tokens: ntok, iters,
  mean_mb_s: +(bytes / 1e6 / (total / iters)).toFixed(2), best_mb_s: +(bytes / 1e6 / best).toFixed(2),
  load_s: +loadS.toFixed(3) }));
