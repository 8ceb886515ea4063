// Parses and binds KQL queries with Microsoft's Kusto.Language (npm @kusto/language-service-next)
// against table schemas, and prints every diagnostic: what the portal's query editor would flag.
// stdin: {"databases": {"<db>": {"<table>": {"<column>": "<type>", ...}}},
//         "queries": [{"id": "...", "database": "<db>", "text": "..."}]}
// stdout: [{"id": "...", "diagnostics": [{"severity", "code", "message", "start", "length"}]}]
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.join(__dirname, "..", "..", "node_modules", "@kusto", "language-service-next");
require(path.join(root, "bridge.js"));
require(path.join(root, "Kusto.Language.Bridge.js"));
const Kusto = global.Kusto.Language;
const Symbols = Kusto.Symbols;

function globalsFor(tables) {
  const symbols = Object.entries(tables).map(([name, columns]) => {
    const schema = "(" + Object.entries(columns).map(([c, t]) => `['${c}']:${t}`).join(", ") + ")";
    return new Symbols.TableSymbol.$ctor7(name, schema, null);
  });
  const database = new Symbols.DatabaseSymbol.ctor("db", symbols);
  return Kusto.GlobalState.Default.WithDatabase(database);
}

const input = JSON.parse(fs.readFileSync(0, "utf8"));
const globals = Object.fromEntries(
  Object.entries(input.databases).map(([name, tables]) => [name, globalsFor(tables)])
);
const results = input.queries.map((query) => {
  if (!(query.database in globals)) throw new Error(`unknown database ${query.database}`);
  const code = Kusto.KustoCode.ParseAndAnalyze(query.text, globals[query.database]);
  const list = code.GetDiagnostics();
  const diagnostics = [];
  for (let i = 0; i < list.Count; i++) {
    const d = list.getItem(i);
    diagnostics.push({
      severity: d.Severity, code: d.Code, message: d.Message, start: d.Start, length: d.Length,
    });
  }
  return { id: query.id, diagnostics };
});
process.stdout.write(JSON.stringify(results));
