// TOML text from a JS object, for the gateway configs a test writes.

/** A small TOML writer for gateway configs: tables, arrays of tables,
 * strings, numbers, booleans and arrays of those. */
export function toml(object) {
  const isTable = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const isTableArray = (v) => Array.isArray(v) && v.length > 0 && v.every(isTable);
  const key = (k) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k));
  const value = (v) => {
    if (typeof v === "string") return JSON.stringify(v).replace(/\x7f/g, "\\u007f");
    if (typeof v === "boolean") return String(v);
    if (typeof v === "number" && Number.isFinite(v)) return String(v);
    if (Array.isArray(v)) return `[${v.map(value).join(", ")}]`;
    if (isTable(v)) return `{ ${entries(v).map(([k, x]) => `${key(k)} = ${value(x)}`).join(", ")} }`;
    throw new TypeError(`toml: cannot write ${String(v)}`);
  };
  const entries = (table) => Object.entries(table).filter(([, v]) => v !== undefined);
  const lines = [];
  const write = (table, names) => {
    for (const [k, v] of entries(table)) if (!isTable(v) && !isTableArray(v)) lines.push(`${key(k)} = ${value(v)}`);
    for (const [k, v] of entries(table)) {
      const name = [...names, key(k)];
      if (isTable(v)) {
        lines.push("", `[${name.join(".")}]`);
        write(v, name);
      } else if (isTableArray(v)) {
        for (const item of v) {
          lines.push("", `[[${name.join(".")}]]`);
          write(item, name);
        }
      }
    }
  };
  write(object, []);
  return `${lines.join("\n").trim()}\n`;
}
