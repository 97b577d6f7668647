// Labels have one syntax in the dashboard, `key=value`, wherever they are typed:
// provisioning, the devices filter, job and alarm targets. `key:value` (the API's
// filter syntax, `?label=site:lab`) is accepted too, and translated where the API
// wants it. Keys never contain `:` (the API refuses them), so the first `=` or `:`
// ends the key.

/** "site=lab" or "site:lab" → ["site", "lab"]; throws with a readable message. */
export function parseLabel(text) {
  const part = text.trim();
  const at = part.search(/[=:]/);
  if (at <= 0 || !part.slice(at + 1).trim()) throw new Error(`label "${part}": write key=value, e.g. site=lab`);
  return [part.slice(0, at).trim(), part.slice(at + 1).trim()];
}

/** "site=lab, rack=3" → {site: "lab", rack: "3"}. */
export function parseLabels(text) {
  const labels = {};
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const [k, v] = parseLabel(part);
    labels[k] = v;
  }
  return labels;
}

/** "site=lab, rack:3" → ["site:lab", "rack:3"], the API's `label=` values. */
export function labelQuery(text) {
  return Object.entries(parseLabels(text)).map(([k, v]) => `${k}:${v}`);
}

/** One label as the API's `key:value` (job and alarm targets). */
export function apiLabel(text) {
  const [k, v] = parseLabel(text);
  return `${k}:${v}`;
}

/** The API's `key:value` as the dashboard shows labels, `key=value`. */
export function shownLabel(api) {
  return String(api).replace(':', '=');
}
