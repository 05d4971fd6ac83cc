// tokenizer/hf_compat_check.js: checks that Hugging Face tokenizers (the Rust library, through its
// Node binding) loads our tokenizer.json and encodes a text file to exactly the ids in our token file.
// A development check, not part of the build or the tests (it needs the npm packages):
//   mkdir -p /tmp/hf && (cd /tmp/hf && npm install tokenizers@0.13.3 tokenizers-linux-x64-gnu@0.13.4-rc2)
//   tokenizer/bpe encode -t data/tokenizer.json -o /tmp/x.bin some.txt
//   NODE_PATH=/tmp/hf/node_modules node tokenizer/hf_compat_check.js data/tokenizer.json some.txt /tmp/x.bin
// The text must be valid UTF-8 (JavaScript strings cannot hold other bytes).
const fs = require("fs");
const { Tokenizer } = require("tokenizers");

async function main() {
  const [jsonPath, textPath, binPath] = process.argv.slice(2);
  if (!binPath) {
    console.error("usage: node hf_compat_check.js tokenizer.json text.txt tokens.bin");
    process.exit(2);
  }
  const tok = Tokenizer.fromFile(jsonPath);
  const text = fs.readFileSync(textPath, "utf8");
  const enc = await tok.encode(text, null, { addSpecialTokens: false });
  const hf = enc.getIds();
  const buf = fs.readFileSync(binPath);
  const vocab = buf.readUInt32LE(12), width = buf.readUInt32LE(16), count = Number(buf.readBigUInt64LE(24));
  const ours = [];
  for (let i = 0; i < count; i++) ours.push(width === 2 ? buf.readUInt16LE(32 + 2 * i) : buf.readUInt32LE(32 + 4 * i));
  let firstDiff = -1;
  for (let i = 0; i < Math.max(hf.length, ours.length); i++)
    if (hf[i] !== ours[i]) { firstDiff = i; break; }
  console.log(`HF vocab ${tok.getVocabSize(true)} (ours ${vocab}); HF ${hf.length} ids, ours ${ours.length}`);
  if (firstDiff >= 0) {
    console.log(`MISMATCH at ${firstDiff}: HF ${hf.slice(firstDiff, firstDiff + 8)} ours ${ours.slice(firstDiff, firstDiff + 8)}`);
    process.exit(1);
  }
  const back = await tok.decode(ours, false);
  console.log(`ids identical; HF decode of our ids ${back === text ? "equals" : "DIFFERS FROM"} the text`);
  process.exit(back === text ? 0 : 1);
}
main().catch((e) => { console.error(e); process.exit(1); });
