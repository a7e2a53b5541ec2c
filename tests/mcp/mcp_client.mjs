#!/usr/bin/env node
// mcp_client.mjs - a tiny MCP stdio client that drives the official MongoDB
// MCP server (mongodb-mcp-server, pinned in ./package.json) against the Atlas
// Administration API, for atlasgate's tests/integration/test_mcp.py.
//
// It spawns `node <server entry>` with Atlas API access configured the way an
// agent would configure it for atlasgate: a dummy service account
// (MDB_MCP_API_CLIENT_ID / MDB_MCP_API_CLIENT_SECRET; atlasgate answers the
// server's own OAuth token request with a phantom token), telemetry off,
// read-only off, no connection string, and the default API base URL
// https://cloud.mongodb.com/ (the kernel redirect does the rest). Then it runs
// initialize, tools/list and two Atlas tools (atlas-list-projects,
// atlas-list-clusters for one project), closes the server's stdin and waits
// for it to exit (the server revokes its token on the way out).
//
// Output: one JSON summary on stdout
//   {"ok":bool, "server":{name,version}, "protocolVersion":..., "tools":[names],
//    "calls":{"<tool>":{"isError":bool,"text":"...","structuredContent":...}},
//    "serverExit":{"code":..,"signal":..}, "errors":[...]}
// The server's stderr (its logs) is copied to our stderr, prefixed "[server] ".
// Exit status: 0 when every step succeeded and no tool call had isError,
// 1 otherwise, 2 on bad usage.
//
// Usage: node mcp_client.mjs [--server PATH] [--project-id ID] [--timeout-ms N]
//                            [--tool NAME[:JSONARGS]]...
// --tool replaces the default calls. The dummy credentials can be overridden
// through the environment (MDB_MCP_API_CLIENT_ID / MDB_MCP_API_CLIENT_SECRET).
// Plain Node (>= 20), no dependencies besides the server itself.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const DEFAULT_PROJECT_ID = "5f0000000000000000000001";
const DUMMY_CLIENT_ID = "mdb_sa_id_000000000000000000000000";
const DUMMY_CLIENT_SECRET = "mdb_sa_sk_dummy";
const PROTOCOL_VERSION = "2025-06-18";

function usage(msg) {
    if (msg) process.stderr.write(`mcp_client: ${msg}\n`);
    process.stderr.write(
        "usage: node mcp_client.mjs [--server PATH] [--project-id ID] [--timeout-ms N] [--tool NAME[:JSONARGS]]...\n");
    process.exit(2);
}

function parseArgs(argv) {
    const o = { server: null, projectId: DEFAULT_PROJECT_ID, timeoutMs: 60000, tools: [] };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const val = () => {
            if (i + 1 >= argv.length) usage(`${a} needs a value`);
            return argv[++i];
        };
        if (a === "--server") o.server = val();
        else if (a === "--project-id") o.projectId = val();
        else if (a === "--timeout-ms") o.timeoutMs = Number(val());
        else if (a === "--tool") {
            const spec = val();
            const colon = spec.indexOf(":");
            const name = colon < 0 ? spec : spec.slice(0, colon);
            let args = {};
            if (colon >= 0) {
                try {
                    args = JSON.parse(spec.slice(colon + 1));
                } catch (e) {
                    usage(`--tool ${spec}: bad JSON: ${e.message}`);
                }
            }
            o.tools.push({ name, args });
        } else if (a === "-h" || a === "--help") usage();
        else usage(`unknown argument: ${a}`);
    }
    if (!Number.isFinite(o.timeoutMs) || o.timeoutMs <= 0) usage("--timeout-ms must be a positive number");
    if (o.tools.length === 0) {
        o.tools = [
            { name: "atlas-list-projects", args: {} },
            { name: "atlas-list-clusters", args: { projectId: o.projectId } },
        ];
    }
    return o;
}

/** The server's entry point: package.json "bin" of the installed mongodb-mcp-server. */
function serverEntry() {
    const pkgDir = join(HERE, "node_modules", "mongodb-mcp-server");
    const pkgJson = join(pkgDir, "package.json");
    if (!existsSync(pkgJson)) {
        throw new Error(`${pkgDir} is not installed (run: npm ci --prefix ${HERE})`);
    }
    const pkg = JSON.parse(readFileSync(pkgJson, "utf8"));
    const bin = typeof pkg.bin === "string" ? pkg.bin : pkg.bin?.["mongodb-mcp-server"];
    if (!bin) throw new Error(`${pkgJson} has no "bin" entry`);
    return { path: resolve(pkgDir, bin), version: pkg.version };
}

/** Newline-delimited JSON-RPC 2.0 over a child's stdin/stdout (the MCP stdio transport). */
class StdioRpc {
    constructor(child, onNotification) {
        this.child = child;
        this.nextId = 1;
        this.pending = new Map();
        this.buf = "";
        this.closed = null;
        this.onNotification = onNotification;
        child.stdout.setEncoding("utf8");
        child.stdout.on("data", (chunk) => {
            this.buf += chunk;
            let nl;
            while ((nl = this.buf.indexOf("\n")) >= 0) {
                const line = this.buf.slice(0, nl).replace(/\r$/, "");
                this.buf = this.buf.slice(nl + 1);
                if (line.trim()) this.dispatch(line);
            }
        });
        child.on("exit", (code, signal) => {
            this.closed = { code, signal };
            for (const [, p] of this.pending) p.reject(new Error(`server exited (code ${code}, signal ${signal})`));
            this.pending.clear();
        });
        child.stdin.on("error", () => {}); // EPIPE after the server died: reported via "exit"
    }

    send(msg) {
        this.child.stdin.write(JSON.stringify({ jsonrpc: "2.0", ...msg }) + "\n");
    }

    dispatch(line) {
        let msg;
        try {
            msg = JSON.parse(line);
        } catch {
            process.stderr.write(`mcp_client: non-JSON line from server: ${line.slice(0, 500)}\n`);
            return;
        }
        if (msg.id !== undefined && msg.method === undefined) {
            const p = this.pending.get(msg.id);
            if (!p) return;
            this.pending.delete(msg.id);
            clearTimeout(p.timer);
            if (msg.error) p.reject(Object.assign(new Error(`${p.method}: ${msg.error.message}`), { rpc: msg.error }));
            else p.resolve(msg.result);
        } else if (msg.id !== undefined) {
            // A request from the server (ping, roots/list, elicitation, ...).
            if (msg.method === "ping") this.send({ id: msg.id, result: {} });
            else if (msg.method === "roots/list") this.send({ id: msg.id, result: { roots: [] } });
            else this.send({ id: msg.id, error: { code: -32601, message: `method not supported: ${msg.method}` } });
        } else {
            this.onNotification(msg);
        }
    }

    request(method, params, timeoutMs) {
        if (this.closed) return Promise.reject(new Error(`server already exited (code ${this.closed.code})`));
        const id = this.nextId++;
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.pending.delete(id);
                reject(new Error(`${method}: no answer within ${timeoutMs} ms`));
            }, timeoutMs);
            this.pending.set(id, { resolve, reject, timer, method });
            this.send({ id, method, params });
        });
    }

    notify(method, params) {
        this.send({ method, ...(params ? { params } : {}) });
    }
}

function waitExit(child, ms) {
    if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
    return new Promise((resolve) => {
        const t = setTimeout(() => resolve(false), ms);
        child.once("exit", () => {
            clearTimeout(t);
            resolve(true);
        });
    });
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const summary = { ok: false, server: null, protocolVersion: null, tools: [], calls: {}, serverExit: null, errors: [] };
    let entry;
    try {
        entry = opts.server ? { path: resolve(opts.server), version: null } : serverEntry();
    } catch (e) {
        summary.errors.push(e.message);
        process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
        process.exit(1);
    }
    summary.serverPackageVersion = entry.version;

    const work = mkdtempSync(join(tmpdir(), "atlasgate-mcp-"));
    const env = { ...process.env };
    // Atlas API access through a (dummy) service account; the default base URL.
    env.MDB_MCP_API_CLIENT_ID = process.env.MDB_MCP_API_CLIENT_ID || DUMMY_CLIENT_ID;
    env.MDB_MCP_API_CLIENT_SECRET = process.env.MDB_MCP_API_CLIENT_SECRET || DUMMY_CLIENT_SECRET;
    delete env.MDB_MCP_API_BASE_URL;
    delete env.MDB_MCP_CONNECTION_STRING;
    env.MDB_MCP_TELEMETRY = "disabled";
    env.MDB_MCP_READ_ONLY = "false";
    env.MDB_MCP_TRANSPORT = "stdio";
    env.MDB_MCP_LOGGERS = "stderr";
    env.MDB_MCP_LOG_PATH = join(work, "logs");
    env.MDB_MCP_EXPORTS_PATH = join(work, "exports");
    env.DO_NOT_TRACK = "1";

    const child = spawn(process.execPath, [entry.path], { env, cwd: work, stdio: ["pipe", "pipe", "pipe"] });
    child.stderr.setEncoding("utf8");
    let errBuf = "";
    child.stderr.on("data", (chunk) => {
        errBuf += chunk;
        let nl;
        while ((nl = errBuf.indexOf("\n")) >= 0) {
            process.stderr.write(`[server] ${errBuf.slice(0, nl)}\n`);
            errBuf = errBuf.slice(nl + 1);
        }
    });
    const spawnError = new Promise((_, reject) => child.once("error", reject));
    spawnError.catch(() => {}); // only raced against initialize
    const rpc = new StdioRpc(child, (n) => {
        if (n.method === "notifications/message") {
            process.stderr.write(`[server log] ${JSON.stringify(n.params)}\n`);
        }
    });
    const t = opts.timeoutMs;

    try {
        const init = await Promise.race([
            rpc.request("initialize", {
                protocolVersion: PROTOCOL_VERSION,
                capabilities: {},
                clientInfo: { name: "atlasgate-mcp-test", version: "1.0.0" },
            }, t),
            spawnError,
        ]);
        summary.server = init.serverInfo ?? null;
        summary.protocolVersion = init.protocolVersion ?? null;
        rpc.notify("notifications/initialized");

        let cursor;
        do {
            const page = await rpc.request("tools/list", cursor ? { cursor } : {}, t);
            for (const tool of page.tools ?? []) summary.tools.push(tool.name);
            cursor = page.nextCursor;
        } while (cursor);

        for (const { name, args } of opts.tools) {
            if (!summary.tools.includes(name)) {
                summary.errors.push(`tool ${name} is not offered by the server`);
                summary.calls[name] = { isError: true, text: "", missing: true };
                continue;
            }
            try {
                const res = await rpc.request("tools/call", { name, arguments: args }, t);
                const text = (res.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
                summary.calls[name] = { isError: res.isError === true, text, structuredContent: res.structuredContent ?? null };
                if (res.isError === true) summary.errors.push(`tool ${name} returned isError: ${text.slice(0, 500)}`);
            } catch (e) {
                summary.calls[name] = { isError: true, text: "", rpcError: e.rpc ?? e.message };
                summary.errors.push(`tool ${name}: ${e.message}`);
            }
        }
    } catch (e) {
        summary.errors.push(e.message);
    }

    // Shut down like an MCP host does: close stdin, then escalate.
    child.stdin.end();
    if (!(await waitExit(child, 10000))) {
        child.kill("SIGTERM");
        if (!(await waitExit(child, 5000))) {
            child.kill("SIGKILL");
            await waitExit(child, 5000);
        }
        summary.errors.push("server did not exit within 10 s of stdin closing");
    }
    if (errBuf) process.stderr.write(`[server] ${errBuf}\n`);
    summary.serverExit = { code: child.exitCode, signal: child.signalCode };
    rmSync(work, { recursive: true, force: true });

    summary.ok = summary.errors.length === 0 && summary.server !== null;
    process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
    process.exit(summary.ok ? 0 : 1);
}

main().catch((e) => {
    process.stderr.write(`mcp_client: ${e.stack ?? e}\n`);
    process.exit(1);
});
