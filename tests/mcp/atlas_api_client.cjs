// The npm mongodb-atlas-api-client (v1.0 API, urllib with HTTP Digest) as an
// agent drives it, for tests/integration/test_capture.py: it creates an
// organization API key with urllib (the client has no call for that) while
// holding only dummy keys, then uses the client with the key it was given,
// and creates a database user with a password of its choosing. Prints one
// JSON line of what it saw.
//
//   node atlas_api_client.cjs ORG_ID PROJECT_ID
"use strict";

const urllib = require("urllib");
const getClient = require("mongodb-atlas-api-client");

const [org, project] = process.argv.slice(2);
const baseUrl = "https://cloud.mongodb.com/api/atlas/v1.0";

async function main() {
  const out = {};
  const created = await urllib.request(`${baseUrl}/orgs/${org}/apiKeys`, {
    method: "POST",
    digestAuth: "dummykey:dummy-private-key",
    data: { desc: "made by the npm client", roles: ["ORG_READ_ONLY"] },
    contentType: "json",
    dataType: "json",
  });
  out.create = created.status;
  out.key = created.data;
  const client = getClient({
    publicKey: created.data.publicKey,
    privateKey: created.data.privateKey,
    baseUrl,
    projectId: project,
  });
  out.projects = await client.project.getAll();
  out.user = await client.user.create({
    username: "npm-user",
    password: "npm-chosen-password",
    databaseName: "admin",
    roles: [{ roleName: "read", databaseName: "app" }],
  });
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.stack ? e.stack : e) }));
  process.exit(1);
});
