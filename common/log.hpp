#pragma once
// Logging setup (spdlog): text or JSON lines on stderr; one logger per layer ("proxy", "auth",
// "config", "session"). Secrets have their own type and print as [redacted] (common/secret.hpp).
#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace xo {

enum class log_style { text, json };

// Idempotent. level: trace|debug|info|warn|error|critical|off. Returns false for an unknown level.
bool init_logging(log_style style, const std::string& level);
// The named logger (created on first use with the current sinks and level).
std::shared_ptr<spdlog::logger> logger(const std::string& name);

}  // namespace xo
