#!/usr/bin/env node
// mongo_driver_client.mjs - the official Node driver (npm mongodb, installed
// with the MCP server in ./node_modules) as an agent would use it through
// atlasgate, for tests/integration/test_mongodb_clients.py.
//
// It connects to a mongodb+srv:// URI that carries NO credential (atlasgate
// authenticates the connections itself), asking for zlib compression (which
// atlasgate negotiates away), then, on database --db, collection --coll:
//   insert    insertMany of --count documents {_id: i, n: i}
//   find      find().sort({_id: 1}) with batchSize --batch-size (so getMore is used)
//   txn       session.withTransaction(insertOne {_id: "txn", txn: true})
//   drop      collection.drop(): the error (code, errmsg) when refused
//   count     countDocuments() after the drop
//   awaited   waits (up to --await-ms) for an awaited (streaming) heartbeat
//   cleanup   deleteMany({}) (atlasgate's rules may refuse drop)
// --mode ping runs a single ping instead (a daemon liveness check).
//
// Output: one JSON summary on stdout
//   {"ok":bool, "steps":{"<step>":{...}}, "heartbeats":{"awaited":n,"polled":n},
//    "errors":[...]}
// ok is true when every step did what a client expects through atlasgate
// (the drop is expected to fail; its outcome is reported, not judged).
// Exit status: 0 when ok, 1 otherwise, 2 on bad usage.
// Plain Node (>= 20), no dependencies besides the driver.

import { MongoClient } from "mongodb";

function usage(msg) {
    if (msg) process.stderr.write(`mongo_driver_client: ${msg}\n`);
    process.stderr.write(
        "usage: node mongo_driver_client.mjs [--uri URI] [--db DB] [--coll NAME] [--count N] [--batch-size N]\n" +
        "                                    [--compressors LIST] [--await-ms N] [--mode full|ping]\n");
    process.exit(2);
}

function parseArgs(argv) {
    const o = {
        uri: "mongodb+srv://cluster0.abcde.mongodb.net/app", db: "app", coll: "driver_items", count: 10,
        batchSize: 3, compressors: "zlib", awaitMs: 15000, mode: "full",
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const val = () => {
            if (i + 1 >= argv.length) usage(`${a} needs a value`);
            return argv[++i];
        };
        if (a === "--uri") o.uri = val();
        else if (a === "--db") o.db = val();
        else if (a === "--coll") o.coll = val();
        else if (a === "--count") o.count = Number(val());
        else if (a === "--batch-size") o.batchSize = Number(val());
        else if (a === "--compressors") o.compressors = val();
        else if (a === "--await-ms") o.awaitMs = Number(val());
        else if (a === "--mode") o.mode = val();
        else if (a === "-h" || a === "--help") usage();
        else usage(`unknown argument: ${a}`);
    }
    if (!["full", "ping"].includes(o.mode)) usage("--mode must be full or ping");
    if (!(o.count > 0) || !(o.batchSize > 0) || !(o.awaitMs >= 0)) usage("bad number");
    return o;
}

function errorInfo(e) {
    return { name: e?.name ?? null, code: e?.code ?? null, codeName: e?.codeName ?? null,
             errmsg: e?.errmsg ?? e?.message ?? String(e) };
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const summary = { ok: false, steps: {}, heartbeats: { awaited: 0, polled: 0 }, errors: [] };
    const client = new MongoClient(opts.uri, {
        compressors: opts.compressors ? opts.compressors.split(",") : [],
        serverSelectionTimeoutMS: 30000,
        heartbeatFrequencyMS: 1000,
        serverMonitoringMode: "stream",
        appName: "atlasgate-driver-test",
    });
    // An awaited heartbeat is the reply to a streaming (exhaustAllowed)
    // hello. The driver also reports its monitor's connection handshake as a
    // succeeded heartbeat with awaited set when the reply carries a
    // topologyVersion, though no streaming hello was sent: only heartbeats of
    // a server whose last heartbeat *started* awaited are counted as such.
    const streaming = new Set();
    client.on("serverHeartbeatStarted", (e) => {
        if (e.awaited) streaming.add(e.connectionId);
        else streaming.delete(e.connectionId);
    });
    client.on("serverHeartbeatSucceeded", (e) => {
        if (e.awaited && streaming.has(e.connectionId)) summary.heartbeats.awaited++;
        else summary.heartbeats.polled++;
    });
    const step = async (name, fn) => {
        try {
            summary.steps[name] = { ok: true, ...(await fn()) };
        } catch (e) {
            summary.steps[name] = { ok: false, error: errorInfo(e) };
            summary.errors.push(`${name}: ${e?.message ?? e}`);
        }
    };

    try {
        await client.connect();
        const db = client.db(opts.db);
        if (opts.mode === "ping") {
            await step("ping", async () => ({ reply: await db.command({ ping: 1 }) }));
        } else {
            const coll = db.collection(opts.coll);
            await step("insert", async () => {
                const docs = Array.from({ length: opts.count }, (_, i) => ({ _id: i, n: i }));
                const r = await coll.insertMany(docs);
                return { insertedCount: r.insertedCount };
            });
            await step("find", async () => {
                const docs = await coll.find({}, { batchSize: opts.batchSize }).sort({ _id: 1 }).toArray();
                return { ids: docs.map((d) => d._id) };
            });
            await step("txn", async () => {
                const session = client.startSession();
                try {
                    await session.withTransaction(async () => {
                        await coll.insertOne({ _id: "txn", txn: true }, { session });
                    });
                } finally {
                    await session.endSession();
                }
                const found = await coll.findOne({ _id: "txn" });
                return { found: found !== null && found.txn === true };
            });
            // The drop's outcome is data: through atlasgate it is expected to be refused.
            try {
                await coll.drop();
                summary.steps.drop = { ok: true, dropped: true };
            } catch (e) {
                summary.steps.drop = { ok: true, dropped: false, error: errorInfo(e) };
            }
            await step("count", async () => ({ count: await coll.countDocuments() }));
            await step("awaited", async () => {
                const deadline = Date.now() + opts.awaitMs;
                while (summary.heartbeats.awaited === 0 && Date.now() < deadline) {
                    await new Promise((r) => setTimeout(r, 100));
                }
                if (summary.heartbeats.awaited === 0) throw new Error(`no awaited heartbeat within ${opts.awaitMs} ms`);
                return { awaited: summary.heartbeats.awaited };
            });
            await step("cleanup", async () => ({ deletedCount: (await coll.deleteMany({})).deletedCount }));
        }
    } catch (e) {
        summary.errors.push(`connect: ${e?.message ?? e}`);
    } finally {
        await client.close().catch((e) => summary.errors.push(`close: ${e?.message ?? e}`));
    }
    summary.ok = summary.errors.length === 0;
    process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
    process.exit(summary.ok ? 0 : 1);
}

main().catch((e) => {
    process.stderr.write(`mongo_driver_client: ${e.stack ?? e}\n`);
    process.exit(1);
});
