// A real OpenID Connect provider (the certified `oidc-provider` package) for
// the sign-in gate's tests, on 127.0.0.1 only.
//
//   node provider.mjs PORT
//
// Issuer http://127.0.0.1:PORT. One confidential client, `omiro`
// (secret `omiro-test-secret`), may be sent back to any
// http://127.0.0.1:<port>/gate/oidc/callback (the Omiro server under test picks
// its port after this provider started). PKCE (S256) is required.
// Scope claims go into the ID token (`conformIdTokenClaims: false`): that
// is what the gate reads.
//
// The login page is a plain form with one button per test account (below),
// so both a browser and an HTTP client can sign in as a named account:
// POST /interaction/<uid>/login with `account=<id>` grants every scope asked
// for and sends the browser back to the client. Prints "listening PORT" once
// it accepts connections. Stops on SIGTERM or SIGINT.

import { generateKeyPairSync } from "node:crypto";
import { createServer } from "node:http";
import Provider from "oidc-provider";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node provider.mjs PORT");
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

// A birthdate `years` years (and a day) ago, so an account's age never
// depends on the day the tests run.
function bornYearsAgo(years) {
  const now = new Date();
  const day = new Date(Date.UTC(now.getUTCFullYear() - years, now.getUTCMonth(), now.getUTCDate() - 1));
  return day.toISOString().slice(0, 10);
}

const ACCOUNTS = {
  "adult-1": { email: "ada@campus.example", groups: ["students"], birthdate: bornYearsAgo(30), over_18: true },
  "adult-2": { email: "bob@campus.example", groups: ["students", "staff"], birthdate: bornYearsAgo(45), over_18: true },
  "minor-1": { email: "cy@campus.example", groups: ["students"], birthdate: bornYearsAgo(15), over_18: false },
  "minor-2": { email: "di@campus.example", groups: ["students"], birthdate: bornYearsAgo(16), over_18: false },
  "child-1": { email: "ed@campus.example", groups: ["students"], birthdate: bornYearsAgo(10), over_18: false },
  "ageless-1": { email: "fay@campus.example", groups: ["students"] },
  "outsider-1": { email: "gus@elsewhere.example", groups: ["students"], birthdate: bornYearsAgo(30), over_18: true },
  "guest-1": { email: "hal@campus.example", groups: ["guests"], birthdate: bornYearsAgo(30), over_18: true },
};

const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: "jwk" }), kid: "test-rs256", use: "sig", alg: "RS256" };

const configuration = {
  clients: [
    {
      client_id: "omiro",
      client_secret: "omiro-test-secret",
      redirect_uris: [`http://127.0.0.1:${port}/unused`],
      response_types: ["code"],
      grant_types: ["authorization_code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  jwks: { keys: [signingKey] },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["birthdate"],
    groups: ["groups"],
    age: ["over_18"],
  },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  cookies: { keys: ["omiro-test-cookie-key"] },
  async findAccount(ctx, id) {
    const account = ACCOUNTS[id];
    if (account === undefined) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email_verified: true, ...account };
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError(ctx, out) {
    ctx.type = "text/plain";
    ctx.body = `${out.error}: ${out.error_description ?? ""}`;
  },
};

const provider = new Provider(issuer, configuration);

// The Omiro server under test listens on a port chosen after this started:
// any loopback origin's /gate/oidc/callback is a registered redirect.
const allowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(uri) {
  const parsed = URL.canParse(uri) ? new URL(uri) : null;
  if (parsed && parsed.protocol === "http:" && parsed.hostname === "127.0.0.1" && parsed.pathname === "/gate/oidc/callback") {
    return true;
  }
  return allowed.call(this, uri);
};

function escape(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

async function readForm(req) {
  let body = "";
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 4096) throw new Error("form too large");
  }
  return new URLSearchParams(body);
}

const interaction = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/;
const handler = provider.callback();

const server = createServer(async (req, res) => {
  const found = interaction.exec(new URL(req.url, issuer).pathname);
  if (found === null) {
    handler(req, res);
    return;
  }
  try {
    const details = await provider.interactionDetails(req, res);
    if (found[1] !== details.uid) throw new Error("interaction mismatch");
    if (req.method === "GET" && !found[2]) {
      const buttons = Object.keys(ACCOUNTS)
        .map((id) => `<button type="submit" name="account" value="${escape(id)}">Sign in as ${escape(id)}</button>`)
        .join("\n");
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(
        `<!doctype html><html lang="en"><head><title>Test provider sign-in</title></head><body>` +
          `<h1>Test provider</h1><form method="post" action="/interaction/${escape(details.uid)}/login">${buttons}</form>` +
          `</body></html>`,
      );
      return;
    }
    if (req.method !== "POST" || !found[2]) {
      res.writeHead(405).end();
      return;
    }
    const accountId = (await readForm(req)).get("account");
    if (!Object.hasOwn(ACCOUNTS, accountId ?? "")) {
      res.writeHead(400, { "content-type": "text/plain" }).end("unknown account");
      return;
    }
    const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
    grant.addOIDCScope(String(details.params.scope ?? "openid"));
    const grantId = await grant.save();
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId }, consent: { grantId } },
      { mergeWithLastSubmission: false },
    );
  } catch (err) {
    if (!res.headersSent) res.writeHead(400, { "content-type": "text/plain" });
    res.end(`interaction failed: ${err.message}`);
  }
});

server.listen(port, "127.0.0.1", () => {
  console.log(`listening ${port}`);
});

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
