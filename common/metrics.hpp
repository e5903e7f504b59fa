#pragma once
// Process-wide metrics in the Prometheus text exposition format (served at /metrics).
// Counters, gauges and histograms with labels; updated at event granularity (a session ends, a
// login is decided, a token request finishes), never per byte, so one mutex is cheap enough and
// keeps the worker threads safe. Label values must never carry a secret: the callers pass
// protocol names, results, reasons, grant types and AADSTS codes only.
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace xo::metrics {

using label = std::pair<std::string_view, std::string_view>;

void counter_add(std::string_view name, std::initializer_list<label> labels, double v = 1);
void gauge_add(std::string_view name, std::initializer_list<label> labels, double delta);
// Seconds; buckets from 1 ms to 60 s.
void observe(std::string_view name, std::initializer_list<label> labels, double seconds);

// The whole registry as Prometheus text (version 0.0.4), HELP and TYPE lines included.
std::string render();

}  // namespace xo::metrics
