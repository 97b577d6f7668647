// Verifies fleetmq's X-Fleetmq-Signature header (Node.js, no dependencies).
//
//   const { verifySignature } = require("./verify_webhook");
//   verifySignature(process.env.WEBHOOK_SECRET, rawBodyBuffer, req.headers["x-fleetmq-signature"])
//
// Compute the HMAC over the raw body bytes as received (with Express:
// `express.raw({ type: "application/json" })`), never over re-serialized JSON.
// Run directly, it checks one delivery: node verify_webhook.js SECRET BODY_FILE SIGNATURE
"use strict";
const crypto = require("node:crypto");

function verifySignature(secret, body, header) {
  if (typeof header !== "string" || !header.startsWith("sha256=")) return false;
  const expected = Buffer.from(
    crypto.createHmac("sha256", secret).update(body).digest("hex"),
  );
  const given = Buffer.from(header.slice("sha256=".length));
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

module.exports = { verifySignature };

if (require.main === module) {
  const [secret, bodyFile, signature] = process.argv.slice(2);
  const body = require("node:fs").readFileSync(bodyFile);
  const ok = verifySignature(secret, body, signature);
  console.log(ok ? "valid" : "INVALID");
  process.exit(ok ? 0 : 1);
}
