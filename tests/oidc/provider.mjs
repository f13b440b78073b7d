// A real OpenID Provider (oidc-provider) for the broker's tests: one client, accounts with
// passwords and groups, back-channel and RP-initiated logout. Configured from the environment:
//   OIDC_PORT            port to listen on (127.0.0.1)
//   OIDC_ISSUER          issuer URL (default http://127.0.0.1:$OIDC_PORT)
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET
//   OIDC_REDIRECT_URIS, OIDC_POST_LOGOUT_REDIRECT_URIS   comma-separated
//   OIDC_BACKCHANNEL_LOGOUT_URI
//   OIDC_ACCOUNTS        path of a JSON file: {"alice": {"password": "...", "groups": ["helpdesk"]}}
//   OIDC_JWKS            path of a JSON file with the private signing keys ({"keys": [...]}); the
//                        tests sign their own bad tokens with it
// Prints "ready" once listening.
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const env = process.env;
const port = Number(env.OIDC_PORT || 4000);
const issuer = env.OIDC_ISSUER || `http://127.0.0.1:${port}`;
const list = (value) => (value || '').split(',').map((s) => s.trim()).filter(Boolean);
const accounts = JSON.parse(readFileSync(env.OIDC_ACCOUNTS, 'utf8'));
const clientId = env.OIDC_CLIENT_ID || 'broker';

const client = {
  client_id: clientId,
  client_secret: env.OIDC_CLIENT_SECRET,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: list(env.OIDC_REDIRECT_URIS),
  post_logout_redirect_uris: list(env.OIDC_POST_LOGOUT_REDIRECT_URIS),
  backchannel_logout_session_required: true,
};
if (env.OIDC_BACKCHANNEL_LOGOUT_URI) {
  client.backchannel_logout_uri = env.OIDC_BACKCHANNEL_LOGOUT_URI;
}

const configuration = {
  clients: [client],
  // PKCE for every client, confidential ones included.
  pkce: { required: () => true },
  // Scope "groups" releases the groups claim; profile the user name.
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: account.username ?? id, name: id, groups: account.groups ?? [] };
      },
    };
  },
  // The broker is a first-party client of this company: no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email groups');
    await grant.save();
    return grant;
  },
  cookies: { keys: ['test-provider-cookie-key-not-a-secret'] },
  // The provider refuses to call special-use addresses (SSRF protection); the broker under
  // test is on 127.0.0.1, so its back-channel logouts go out without that check here.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
};
if (env.OIDC_JWKS) {
  configuration.jwks = JSON.parse(readFileSync(env.OIDC_JWKS, 'utf8'));
}

const provider = new Provider(issuer, configuration);

// devInteractions' login form takes any name; ours checks the account's password first.
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && /^\/interaction\/[^/]+$/.test(ctx.path)) {
    const chunks = [];
    for await (const chunk of ctx.req) chunks.push(chunk);
    const body = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString()));
    ctx.req.body = body;
    if (body.prompt === 'login') {
      const account = accounts[body.login];
      if (!account || account.password !== body.password) {
        ctx.status = 401;
        ctx.type = 'text';
        ctx.body = 'wrong user name or password';
        return;
      }
    }
  }
  await next();
});

provider.on('backchannel.error', (ctx, err, client, accountId, sid) => {
  console.error(`backchannel logout to ${client.clientId} failed: ${err.message} ${err.cause ?? ""}`);
});
provider.on('backchannel.success', (ctx, client, accountId, sid) => {
  console.log(`backchannel logout sent to ${client.clientId} for ${accountId}`);
});

provider.listen(port, '127.0.0.1', () => {
  console.log('ready');
});
