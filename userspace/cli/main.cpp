// atlasgate: the daemon and its command line (README "Command line").

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/log.h"
#include "common/text.h"
#include "config/config.h"
#include "control/control.h"
#include "daemon/daemon.h"
#include "health/health.h"
#include "policy/policy.h"
#include "tls/authority.h"

namespace json = boost::json;
using namespace atlasgate;

namespace {

constexpr const char* kDefaultConfig = "/etc/atlasgate/atlasgate.yaml";

int fail(const std::string& message) {
  std::fprintf(stderr, "atlasgate: %s\n", message.c_str());
  return 1;
}

// Sends a control request; prints the error and returns nullopt when it failed.
std::optional<json::object> ask(const std::string& socket, json::object req) {
  auto r = control::call(socket, req);
  if (!r) {
    fail(r.error().message);
    return std::nullopt;
  }
  if (!r->is_object()) {
    fail("unexpected answer from the daemon");
    return std::nullopt;
  }
  auto& o = r->as_object();
  if (auto ok = o.if_contains("ok"); !ok || !ok->is_bool() || !ok->as_bool()) {
    auto e = o.if_contains("error");
    fail(e && e->is_string() ? text::forTerminal(e->as_string()) : "the daemon refused the request");
    return std::nullopt;
  }
  return o;
}

// Everything the daemon reports is printed through these: names, paths,
// process names and bodies come from agents, and an agent must not be able
// to write to the operator's terminal (escape sequences, bidi overrides,
// fake lines, padding that hides the rest). See text::forTerminal.
std::string str(const json::value* v) {
  if (!v) return "";
  if (v->is_string()) return text::forTerminal(v->as_string());
  return text::jsonForTerminal(json::serialize(*v));
}

std::string str(std::string_view s) { return text::forTerminal(s); }

// --json: the daemon's answer as it is (JSON escapes keep it on one line),
// with the code points a terminal would act on escaped as \uXXXX.
void printJson(const json::object& o) { std::printf("%s\n", text::jsonForTerminal(json::serialize(o)).c_str()); }

void printStatus(const json::object& o) {
  std::printf("atlasgate pid %s, listening on port %s, config %s\n", str(o.if_contains("pid")).c_str(),
              str(o.if_contains("listen_port")).c_str(), str(o.if_contains("config")).c_str());
  // The same verdict as GET /healthz (a daemon of an older build has none).
  if (auto h = o.if_contains("health"); h && h->is_object()) {
    std::printf("health: %s\n", str(h->as_object().if_contains("state")).c_str());
    if (auto ps = h->as_object().if_contains("problems"); ps && ps->is_array())
      for (const auto& p : ps->as_array())
        std::printf("  - %s\n", p.is_string() ? health::reasonForOutput(p.as_string()).c_str() : str(&p).c_str());
  }
  std::printf("\nattached cgroups:\n");
  for (const auto& a : o.at("attached").as_array())
    std::printf("  %s (id %s)\n", str(a.as_object().if_contains("cgroup")).c_str(),
                str(a.as_object().if_contains("cgroup_id")).c_str());
  std::printf("\ntargets:\n");
  for (const auto& [host, t] : o.at("targets").as_object()) {
    std::printf("  %s", str(host).c_str());
    if (auto d = t.as_object().if_contains("dns")) std::printf("  (dns: %s)", str(d).c_str());
    std::printf("\n");
    for (const auto& a : t.as_object().at("addresses").as_array())
      std::printf("    %-40s %s\n", str(a.as_object().if_contains("address")).c_str(),
                  str(a.as_object().if_contains("source")).c_str());
  }
  std::printf("\ncredentials:\n");
  for (const auto& c : o.at("credentials").as_array()) {
    const auto& co = c.as_object();
    std::printf("  %-50s %s (fetches %s, failures %s)\n", str(co.if_contains("credential")).c_str(),
                str(co.if_contains("state")).c_str(), str(co.if_contains("fetches")).c_str(),
                str(co.if_contains("failures")).c_str());
  }
  std::printf("\nconnections:\n");
  const auto& conns = o.at("connections").as_array();
  if (conns.empty()) std::printf("  none\n");
  for (const auto& c : conns) {
    const auto& co = c.as_object();
    std::printf("  #%s agent %s pid %s (%s) -> %s, %s request(s), %ss\n", str(co.if_contains("id")).c_str(),
                str(co.if_contains("agent")).c_str(), str(co.if_contains("pid")).c_str(),
                str(co.if_contains("comm")).c_str(), str(co.if_contains("dst")).c_str(),
                str(co.if_contains("requests")).c_str(), str(co.if_contains("age_s")).c_str());
  }
  std::printf("\ncounters:\n");
  for (const auto& [k, v] : o.at("counters").as_object()) std::printf("  %-28s %s\n", str(k).c_str(), str(&v).c_str());
  std::printf("\nkernel (bpf) counters:\n");
  for (const auto& [k, v] : o.at("bpf").as_object()) std::printf("  %-28s %s\n", str(k).c_str(), str(&v).c_str());
  std::printf("\napprovals pending: %s\n", str(o.if_contains("approvals_pending")).c_str());
}

struct ExplainArgs {
  std::string agent;
  std::string bodyFile;
  std::string host;
};

// atlasgate check [--explain METHOD PATH]: the config and its rule table, or
// which rule decides one request, and why.
int runCheck(const std::string& configPath, const std::vector<std::string>& explain, const ExplainArgs& args) {
  auto cfg = config::loadConfig(configPath);
  if (!cfg) return fail(cfg.error().message);
  auto pol = policy::Policy::compile(cfg->rules);
  if (!pol) return fail(pol.error().message);
  if (explain.empty()) {
    std::printf("%s: OK\n\n%s\n%s", configPath.c_str(), config::describeConfig(*cfg).c_str(), (*pol)->table().c_str());
    return 0;
  }
  std::string body;
  if (!args.bodyFile.empty()) {
    std::ifstream in(args.bodyFile);
    if (!in) return fail("cannot read " + args.bodyFile);
    std::stringstream ss;
    ss << in.rdbuf();
    body = ss.str();
  }
  policy::Request req;
  req.method = explain[0];
  req.target = explain[1];
  req.host = args.host.empty() ? cfg->targets.front().host : args.host;
  req.agent = args.agent;
  if (!args.bodyFile.empty()) req.body = std::string_view(body);
  std::printf("%s", (*pol)->explain(req).render().c_str());
  return 0;
}

int runCa(const std::string& configPath) {
  std::string stateDir = "/var/lib/atlasgate";
  if (::access(configPath.c_str(), R_OK) == 0) {
    auto cfg = config::loadConfig(configPath);
    if (!cfg) return fail(cfg.error().message);
    stateDir = cfg->stateDir;
  }
  auto p = tls::caPaths(stateDir);
  std::printf("ca_cert: %s\ntrust_bundle: %s\n", p.caCert.c_str(), p.trustBundle.c_str());
  if (::access(p.caCert.c_str(), R_OK) != 0)
    std::fprintf(stderr, "(not created yet: the daemon creates them on its first start)\n");
  return 0;
}

void printApprovals(const json::array& list) {
  if (list.empty()) std::printf("no requests are waiting for approval\n");
  for (const auto& a : list) {
    const auto& ao = a.as_object();
    std::printf("%s  %s %s %s  agent %s  rule %s  waiting %ss of %ss\n", str(ao.if_contains("id")).c_str(),
                str(ao.if_contains("method")).c_str(), str(ao.if_contains("host")).c_str(),
                str(ao.if_contains("path")).c_str(), str(ao.if_contains("agent")).c_str(),
                str(ao.if_contains("rule")).c_str(), str(ao.if_contains("waiting_s")).c_str(),
                str(ao.if_contains("timeout_s")).c_str());
    if (auto b = ao.if_contains("body"); b && b->is_string() && !b->as_string().empty()) {
      // Only the start of the body is sent, after its leading
      // whitespace: say how big it is, what was skipped, and mark the cut.
      auto bytes = ao.if_contains("body_bytes");
      auto blanks = ao.if_contains("body_leading_whitespace");
      auto cut = ao.if_contains("body_truncated");
      bool truncated = cut && cut->is_bool() && cut->as_bool();
      std::string about = bytes ? str(bytes) + " bytes" : "size unknown";
      if (blanks && blanks->is_number() && blanks->to_number<double>() > 0)
        about += ", after " + str(blanks) + " bytes of leading whitespace";
      if (truncated) about += ", only the start shown";
      std::printf("    body (%s): %s%s\n", about.c_str(), str(b).c_str(), truncated ? " [truncated]" : "");
    }
  }
}

// atlasgate approvals [allow|deny ID]
int runApprovals(const std::string& socket, const std::vector<std::string>& decision, bool asJson) {
  if (decision.empty()) {
    auto o = ask(socket, {{"cmd", "approvals"}});
    if (!o) return 1;
    if (asJson)
      printJson(*o);
    else
      printApprovals(o->at("approvals").as_array());
    return 0;
  }
  if (decision.size() != 2 || (decision[0] != "allow" && decision[0] != "deny"))
    return fail("usage: atlasgate approvals [allow|deny ID]");
  char* end = nullptr;
  long long id = std::strtoll(decision[1].c_str(), &end, 10);
  if (!end || *end || id <= 0) return fail("approval ID must be a positive number");
  auto o = ask(socket, {{"cmd", "decide"}, {"id", id}, {"allow", decision[0] == "allow"}});
  if (!o) return 1;
  std::printf("request %lld %s\n", id, decision[0] == "allow" ? "allowed" : "denied");
  return 0;
}

int runStatus(const std::string& socket, bool asJson) {
  auto o = ask(socket, {{"cmd", "status"}});
  if (!o) return 1;
  if (asJson)
    printJson(*o);
  else
    printStatus(*o);
  return 0;
}

int runAttach(const std::string& socket, bool attach, const std::string& cgroupPath) {
  auto o = ask(socket, {{"cmd", attach ? "attach" : "detach"}, {"path", cgroupPath}});
  if (!o) return 1;
  std::printf("%s %s\n", attach ? "attached" : "detached", str(o->if_contains("path")).c_str());
  return 0;
}

// atlasgate credentials [list | revoke NAME]: what capture keeps, by name.
int runCredentials(const std::string& socket, const std::vector<std::string>& args, bool asJson) {
  if (args.empty() || (args.size() == 1 && args[0] == "list")) {
    auto o = ask(socket, {{"cmd", "credentials"}});
    if (!o) return 1;
    if (asJson) {
      printJson(*o);
      return 0;
    }
    const auto& list = o->at("credentials").as_array();
    if (list.empty()) std::printf("no captured credentials\n");
    for (const auto& v : list) {
      const auto& e = v.as_object();
      // Names and labels come from Atlas and from agents: shown inert.
      auto s = [&](const char* k) { return text::forTerminal(str(e.if_contains(k))); };
      std::printf(
          "%s  %s  owner %s  %s on %s  %s%s\n", s("name").c_str(), s("kind").c_str(), s("owner").c_str(),
          s("scope").c_str(), s("target").c_str(), s("state").c_str(),
          e.contains("label") && !str(e.if_contains("label")).empty() ? ("  \"" + s("label") + "\"").c_str() : "");
    }
    return 0;
  }
  if (args.size() != 2 || args[0] != "revoke") return fail("usage: atlasgate credentials [list | revoke NAME]");
  auto o = ask(socket, {{"cmd", "revoke_credential"}, {"name", args[1]}});
  if (!o) return 1;
  std::printf("revoked %s\n", text::forTerminal(args[1]).c_str());
  return 0;
}

// atlasgate console-url: the link signs in whoever opens it first; it is
// printed for the operator only (the control socket is root's).
int runConsoleUrl(const std::string& socket) {
  auto o = ask(socket, {{"cmd", "console_url"}});
  if (!o) return 1;
  std::printf("%s\n", str(o->if_contains("url")).c_str());
  return 0;
}

int runReload(const std::string& socket) {
  auto o = ask(socket, {{"cmd", "reload"}});
  if (!o) return 1;
  std::printf("reloaded\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"atlasgate: safe, transparent credential brokering for AI agents using the MongoDB Atlas API"};
  app.require_subcommand(1);
  std::string socket = control::kDefaultSocket;
  app.add_option("--control-socket", socket, "control socket of the daemon")->capture_default_str();

  std::string configPath = kDefaultConfig;
  std::string runDir = "/run/atlasgate";
  auto* daemonCmd =
      app.add_subcommand("daemon", "load the BPF programs, attach, serve (SIGHUP reloads, SIGTERM drains)");
  daemonCmd->add_option("--config,-c", configPath, "config file")->capture_default_str();
  daemonCmd->add_option("--run-dir", runDir, "where control.sock and runtime.json live")->capture_default_str();

  auto* checkCmd = app.add_subcommand("check", "validate a config and print the compiled rule table");
  checkCmd->add_option("--config,-c", configPath, "config file")->capture_default_str();
  std::vector<std::string> explain;
  std::string explainAgent = "agent", explainBody, explainHost;
  checkCmd->add_option("--explain", explain, "METHOD PATH: which rule would decide, and why")->expected(2);
  checkCmd->add_option("--agent", explainAgent, "agent name for --explain")->capture_default_str();
  checkCmd->add_option("--host", explainHost, "target host for --explain (default: the first target)");
  checkCmd->add_option("--body", explainBody, "file with the JSON request body for --explain");

  auto* caCmd = app.add_subcommand("ca", "print the paths of the CA certificate and of the agents' trust bundle");
  caCmd->add_option("--config,-c", configPath, "config file")->capture_default_str();

  bool asJson = false;
  auto* statusCmd = app.add_subcommand("status", "agents, live connections, token state, counters");
  statusCmd->add_flag("--json", asJson, "machine-readable output");

  std::string cgroupPath;
  auto* attachCmd = app.add_subcommand("attach", "attach a cgroup at run time");
  attachCmd->add_option("PATH", cgroupPath, "cgroup (absolute, or relative to the cgroup2 mount)")->required();
  auto* detachCmd = app.add_subcommand("detach", "detach a cgroup at run time");
  detachCmd->add_option("PATH", cgroupPath, "cgroup (absolute, or relative to the cgroup2 mount)")->required();

  std::vector<std::string> decision;
  auto* approvalsCmd =
      app.add_subcommand("approvals", "list requests held by approve rules; allow|deny ID decides one");
  approvalsCmd->add_option("DECISION", decision, "allow ID | deny ID")->expected(0, 2);
  approvalsCmd->add_flag("--json", asJson, "machine-readable output");

  std::vector<std::string> credentialArgs;
  auto* credentialsCmd = app.add_subcommand(
      "credentials", "credentials captured from Atlas (by name, never a secret); revoke NAME drops one");
  credentialsCmd->add_option("ACTION", credentialArgs, "list | revoke NAME")->expected(0, 2);
  credentialsCmd->add_flag("--json", asJson, "machine-readable output");

  auto* consoleCmd = app.add_subcommand(
      "console-url", "print a one-time sign-in link to the web console (listen.console; valid 10 minutes)");

  auto* reloadCmd =
      app.add_subcommand("reload", "reload the daemon's config (like SIGHUP); prints why a bad one was refused");
  app.add_subcommand("version", "print the version");

  CLI11_PARSE(app, argc, argv);

  if (daemonCmd->parsed()) return daemon::run({configPath, runDir});

  if (checkCmd->parsed()) return runCheck(configPath, explain, {explainAgent, explainBody, explainHost});
  if (caCmd->parsed()) return runCa(configPath);
  if (statusCmd->parsed()) return runStatus(socket, asJson);
  if (attachCmd->parsed() || detachCmd->parsed()) return runAttach(socket, attachCmd->parsed(), cgroupPath);

  if (approvalsCmd->parsed()) return runApprovals(socket, decision, asJson);
  if (credentialsCmd->parsed()) return runCredentials(socket, credentialArgs, asJson);
  if (consoleCmd->parsed()) return runConsoleUrl(socket);
  if (reloadCmd->parsed()) return runReload(socket);

  std::printf("atlasgate 0.1.0\n");
  return 0;
}
