// Verifying walhook's requests in Node.js (no packages needed).
//
//   node verify.js request.json    # prints "ok" or "bad"
//
// request.json: see verify.py. In a real server, verify over the raw body
// bytes (e.g. express.raw()), never over re-serialized JSON.
"use strict";
const crypto = require("crypto");
const fs = require("fs");

function verifyHmac(secret, headers, body, toleranceSeconds = 300) {
  const key = secret.startsWith("whsec_")
    ? Buffer.from(secret.slice(6), "base64")
    : Buffer.from(secret, "utf8");
  const id = headers["webhook-id"] || "";
  const timestamp = headers["webhook-timestamp"] || "";
  if (!/^\d+$/.test(timestamp)) return false;
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > toleranceSeconds) return false;
  const expected = crypto
    .createHmac("sha256", key)
    .update(Buffer.concat([Buffer.from(`${id}.${timestamp}.`), body]))
    .digest();
  // One "v1,<base64>" per secret while secrets rotate.
  return (headers["webhook-signature"] || "").split(" ").some((entry) => {
    const [version, sig] = entry.split(",", 2);
    const given = Buffer.from(sig || "", "base64");
    return version === "v1" && given.length === expected.length && crypto.timingSafeEqual(given, expected);
  });
}

function verifyJiandaoyun(secret, query, headers, body) {
  const expected = crypto
    .createHash("sha1")
    .update(Buffer.concat([Buffer.from(`${query.nonce}:`), body, Buffer.from(`:${secret}:${query.timestamp}`)]))
    .digest("hex");
  const given = Buffer.from(headers["x-jdy-signature"] || "");
  return given.length === expected.length && crypto.timingSafeEqual(given, Buffer.from(expected));
}

const req = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const body = Buffer.from(req.body, "utf8");
const good =
  req.scheme === "hmac"
    ? verifyHmac(req.secret, req.headers, body)
    : verifyJiandaoyun(req.secret, req.query, req.headers, body);
console.log(good ? "ok" : "bad");
