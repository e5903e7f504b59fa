#include "common/metrics.hpp"

#include <fmt/format.h>

#include <array>
#include <map>
#include <mutex>
#include <vector>

namespace xo::metrics {

namespace {

enum class kind { counter, gauge, histogram };

struct known_metric {
  std::string_view name;
  kind type;
  std::string_view help;
};

// Every metric the proxy exports, with its help text: a fixed list, so a typo in a caller shows
// up as an "unregistered" metric in tests rather than as a silently new series.
constexpr known_metric catalogue[] = {
    {"xoauth_sessions_active", kind::gauge, "Client sessions open now, by protocol."},
    {"xoauth_sessions_total", kind::counter,
     "Client sessions ended, by protocol and result (relayed: logged in and relayed; "
     "not_logged_in: ended before a successful login)."},
    {"xoauth_logins_total", kind::counter, "Login decisions, by protocol, result and reason."},
    {"xoauth_token_requests_total", kind::counter,
     "Requests to the identity platform, by grant and outcome."},
    {"xoauth_token_request_seconds", kind::histogram,
     "Duration of identity-platform token requests, by grant."},
    {"xoauth_idp_errors_total", kind::counter,
     "Identity-platform error answers, by OAuth error and AADSTS code."},
    {"xoauth_upstream_connect_seconds", kind::histogram,
     "Time to connect to the upstream server (TCP and TLS when implicit), by protocol."},
    {"xoauth_upstream_login_seconds", kind::histogram,
     "Time from the local login decision to the upstream accepting XOAUTH2, by protocol."},
    {"xoauth_relayed_bytes_total", kind::counter,
     "Bytes relayed, by protocol and direction (client_to_upstream, upstream_to_client)."},
};

constexpr std::array<double, 14> buckets{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,  0.5,    1,     2.5,  5,     10,  60};

struct histogram {
  std::array<std::uint64_t, buckets.size()> counts{};
  std::uint64_t count = 0;
  double sum = 0;
};

struct series {
  double value = 0;
  histogram h;
};

struct registry {
  std::mutex mu;
  // name -> rendered label set ("{a=\"b\"}") -> series
  std::map<std::string, std::map<std::string, series>, std::less<>> data;
};

registry& reg() {
  static registry r;
  return r;
}

std::string escape(std::string_view v) {
  std::string out;
  for (char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\';
    if (ch == '\n') {
      out += "\\n";
      continue;
    }
    out += ch;
  }
  return out;
}

std::string label_text(std::initializer_list<label> labels) {
  if (labels.size() == 0) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    out += fmt::format("{}{}=\"{}\"", first ? "" : ",", k, escape(v));
    first = false;
  }
  return out + "}";
}

series& at(std::string_view name, std::initializer_list<label> labels) {
  auto& r = reg();
  auto it = r.data.find(name);
  if (it == r.data.end()) it = r.data.emplace(std::string(name), std::map<std::string, series>{}).first;
  return it->second[label_text(labels)];
}

std::string with_le(const std::string& labels, const std::string& le) {
  if (labels.empty()) return "{le=\"" + le + "\"}";
  return labels.substr(0, labels.size() - 1) + ",le=\"" + le + "\"}";
}

}  // namespace

void counter_add(std::string_view name, std::initializer_list<label> labels, double v) {
  std::lock_guard lock{reg().mu};
  at(name, labels).value += v;
}

void gauge_add(std::string_view name, std::initializer_list<label> labels, double delta) {
  std::lock_guard lock{reg().mu};
  at(name, labels).value += delta;
}

void observe(std::string_view name, std::initializer_list<label> labels, double seconds) {
  std::lock_guard lock{reg().mu};
  auto& h = at(name, labels).h;
  for (std::size_t i = 0; i < buckets.size(); ++i)
    if (seconds <= buckets[i]) ++h.counts[i];
  ++h.count;
  h.sum += seconds;
}

std::string render() {
  std::lock_guard lock{reg().mu};
  std::string out;
  for (const auto& m : catalogue) {
    const char* type = m.type == kind::counter ? "counter" : m.type == kind::gauge ? "gauge" : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", m.name, m.help, m.name, type);
    auto it = reg().data.find(m.name);
    if (it == reg().data.end()) continue;
    for (const auto& [labels, s] : it->second) {
      if (m.type != kind::histogram) {
        out += fmt::format("{}{} {}\n", m.name, labels, s.value);
        continue;
      }
      for (std::size_t i = 0; i < buckets.size(); ++i)
        out += fmt::format("{}_bucket{} {}\n", m.name, with_le(labels, fmt::format("{}", buckets[i])),
                           s.h.counts[i]);
      out += fmt::format("{}_bucket{} {}\n", m.name, with_le(labels, "+Inf"), s.h.count);
      out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", m.name, labels, s.h.sum, m.name, labels,
                         s.h.count);
    }
  }
  for (const auto& [name, sets] : reg().data) {
    bool known = false;
    for (const auto& m : catalogue) known = known || m.name == name;
    if (!known) out += fmt::format("# unregistered metric {} ({} series)\n", name, sets.size());
  }
  return out;
}

}  // namespace xo::metrics
