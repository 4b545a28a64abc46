// Publishes warden jobs from Node.js, following docs/publishing.md:
//
// - the access token comes from the client-credentials grant, cached and fetched again before it
//   expires (never once per job);
// - each job is a persistent JSON message with a message_id and `authorization: Bearer <token>`,
//   published to the exchange warden.jobs with the work queue's name as routing key, mandatory;
// - confirms are awaited a window at a time; a job the broker returns (no such queue), nacks, or
//   refuses (no write permission) is reported with the broker's reason, and only confirmed jobs
//   are reported published.
//
//   WARDEN_CLIENT_SECRET=... node publish.mjs --broker-url amqp://user:pass@localhost:5672/ \
//     --token-url https://auth.example.com/token --client-id reporter --scope reports:write \
//     jobs reports.generate '{"report": "q3"}' --count 10
//
// Prints the message id of each confirmed job, one per line. Exits 1 when a job was refused,
// 2 on a usage error. Never prints a token or the client secret.

import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

import amqp from "amqplib";

export const JOBS_EXCHANGE = "warden.jobs";
export const WINDOW = 256;

/** Tokens of the client-credentials grant (RFC 6749 section 4.4), cached until shortly before
 * they expire: `refreshBefore` seconds before, but never past half their lifetime. */
export class ClientCredentials {
  constructor({ tokenUrl, clientId, clientSecret, scope, refreshBefore = 30 }) {
    Object.assign(this, { tokenUrl, clientId, scope, refreshBefore });
    Object.defineProperty(this, "secret", { value: clientSecret, enumerable: false });
    this.current = null;
    this.renewAt = 0;
    this.pending = null;
    this.requests = 0;
  }

  async token() {
    if (this.current !== null && Date.now() < this.renewAt) return this.current;
    this.pending ??= this.#fetch().finally(() => {
      this.pending = null;
    });
    return this.pending;
  }

  async #fetch() {
    const asked = Date.now();
    this.requests += 1;
    const form = new URLSearchParams({ grant_type: "client_credentials" });
    if (this.scope) form.set("scope", this.scope);
    const basic = Buffer.from(
      `${encodeURIComponent(this.clientId)}:${encodeURIComponent(this.secret)}`,
    ).toString("base64");
    const response = await fetch(this.tokenUrl, {
      method: "POST",
      headers: {
        authorization: `Basic ${basic}`,
        "content-type": "application/x-www-form-urlencoded",
        accept: "application/json",
      },
      body: form,
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok || typeof answer.access_token !== "string") {
      throw new Error(`the token request was refused: HTTP ${response.status} ${answer.error ?? ""}`);
    }
    // The sooner of expires_in and the token's own exp.
    const lifetimes = [expiresIn(answer.access_token)];
    if (typeof answer.expires_in === "number" && answer.expires_in > 0) {
      lifetimes.push(answer.expires_in);
    }
    const known = lifetimes.filter((l) => l !== null);
    const lifetime = known.length ? Math.min(...known) : this.refreshBefore * 2;
    const usedFor = Math.max(lifetime - this.refreshBefore, lifetime / 2);
    this.current = answer.access_token;
    this.renewAt = asked + usedFor * 1000;
    return this.current;
  }
}

/** Seconds until a JWT's exp, read without verifying it (the worker verifies), or null. */
function expiresIn(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
    return typeof claims.exp === "number" ? Math.max(claims.exp - Date.now() / 1000, 0) : null;
  } catch {
    return null;
  }
}

/** A job the broker did not confirm: `cause` is unroutable, access_refused, exchange_missing,
 * nacked or not_confirmed (as warden's Python Publisher names them). */
export class JobRefused extends Error {
  constructor(messageId, cause, detail) {
    super(`job ${messageId}: ${detail}`);
    Object.assign(this, { messageId, cause });
  }
}

function channelRefusal(error) {
  const said = String(error?.message ?? error);
  if (said.includes("ACCESS_REFUSED") || said.includes("ACCESS-REFUSED")) {
    return ["access_refused", `the broker refused it (${said}); the publisher's user needs write permission on ${JOBS_EXCHANGE}`];
  }
  if (said.includes("NOT_FOUND") || said.includes("NOT-FOUND")) {
    return ["exchange_missing", `the broker refused it (${said}); start a worker first, it declares ${JOBS_EXCHANGE}`];
  }
  return ["not_confirmed", `not confirmed: the channel closed (${said})`];
}

/** Publishes `jobs` ({action, payload, messageId?}) to `queue` through warden.jobs; resolves to
 * the ids of the confirmed jobs, in order, or rejects with the first JobRefused, whose
 * `confirmed` lists the ids that were confirmed all the same. */
export async function publishJobs({ brokerUrl, queue, jobs, tokens, window = WINDOW }) {
  const connection = await amqp.connect(brokerUrl);
  connection.on("error", () => {}); // a refused channel closes; the connection error is reported per job
  const confirmed = [];
  let refusal = null;
  try {
    const channel = await connection.createConfirmChannel();
    let closedBy = null;
    channel.on("error", (error) => {
      closedBy = error;
    });
    const returned = new Map();
    channel.on("return", (message) => {
      const { replyCode, replyText } = message.fields;
      returned.set(message.properties.messageId, `${replyCode} ${replyText}`);
    });
    for (let start = 0; start < jobs.length && refusal === null; start += window) {
      const batch = jobs.slice(start, start + window);
      const settled = await Promise.allSettled(
        batch.map(async (job) => {
          const messageId = job.messageId ?? randomUUID();
          const token = await tokens.token();
          const body = Buffer.from(JSON.stringify({ action: job.action, payload: job.payload ?? {} }));
          await new Promise((resolve, reject) => {
            try {
              channel.publish(JOBS_EXCHANGE, queue, body, {
                persistent: true,
                mandatory: true,
                contentType: "application/json",
                messageId,
                timestamp: Math.floor(Date.now() / 1000),
                headers: { authorization: `Bearer ${token}` },
              }, (error) => (error ? reject(error) : resolve()));
            } catch (error) {
              reject(error);
            }
          }).catch((error) => {
            if (closedBy !== null || error?.message?.includes("closed")) {
              const [cause, detail] = channelRefusal(closedBy ?? error);
              throw new JobRefused(messageId, cause, detail);
            }
            throw new JobRefused(messageId, "nacked", "the broker did not accept it (basic.nack)");
          });
          const returnedWith = returned.get(messageId);
          if (returnedWith !== undefined) {
            throw new JobRefused(
              messageId,
              "unroutable",
              `the broker returned it as unroutable (${returnedWith}): no queue ${JSON.stringify(queue)} is bound to ${JOBS_EXCHANGE}`,
            );
          }
          return messageId;
        }),
      );
      for (const outcome of settled) {
        if (outcome.status === "fulfilled") confirmed.push(outcome.value);
        else refusal ??= outcome.reason;
      }
    }
  } finally {
    await connection.close().catch(() => {});
  }
  if (refusal !== null) {
    refusal.confirmed = confirmed;
    throw refusal;
  }
  return confirmed;
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      "broker-url": { type: "string", default: process.env.WARDEN_BROKER_URL ?? "amqp://guest:guest@localhost:5672/" },
      "token-url": { type: "string" },
      "client-id": { type: "string" },
      scope: { type: "string" },
      count: { type: "string", default: "1" },
    },
  });
  const [queue, action, payload = "{}"] = positionals;
  const secret = process.env.WARDEN_CLIENT_SECRET;
  if (!queue || !action || !values["token-url"] || !values["client-id"] || !secret) {
    console.error(
      "usage: WARDEN_CLIENT_SECRET=... node publish.mjs --token-url URL --client-id ID " +
        "[--scope S] [--broker-url URL] [--count N] QUEUE ACTION [PAYLOAD]",
    );
    process.exit(2);
  }
  const tokens = new ClientCredentials({
    tokenUrl: values["token-url"],
    clientId: values["client-id"],
    clientSecret: secret,
    scope: values.scope,
  });
  const jobs = Array.from({ length: Number(values.count) }, () => ({ action, payload: JSON.parse(payload) }));
  try {
    const ids = await publishJobs({ brokerUrl: values["broker-url"], queue, jobs, tokens });
    console.log(ids.join("\n"));
  } catch (error) {
    if (error instanceof JobRefused) {
      if (error.confirmed.length) console.log(error.confirmed.join("\n"));
      console.error(`refused (${error.cause}): ${error.message}`);
    } else {
      console.error(`failed: ${error.message}`);
    }
    process.exitCode = 1;
  }
  console.error(`token requests: ${tokens.requests}`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await main();
}
