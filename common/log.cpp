#include "common/log.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <chrono>
#include <mutex>

namespace xo {

namespace {

// One JSON object per line: {"ts":"...","level":"info","logger":"proxy","msg":"..."}.
class json_formatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    auto t = msg.time;
    auto secs = time_point_cast<seconds>(t);
    auto ms = duration_cast<milliseconds>(t - secs).count();
    std::time_t tt = system_clock::to_time_t(secs);
    std::tm tm{};
    gmtime_r(&tt, &tm);
    fmt::format_to(std::back_inserter(dest),
                   "{{\"ts\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z\",\"level\":\"{}\","
                   "\"logger\":\"",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ms, spdlog::level::to_string_view(msg.level));
    escape(msg.logger_name, dest);
    dest.append(std::string_view{"\",\"msg\":\""});
    escape(msg.payload, dest);
    dest.append(std::string_view{"\"}\n"});
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<json_formatter>();
  }

 private:
  static void escape(spdlog::string_view_t s, spdlog::memory_buf_t& dest) {
    for (char c : s) {
      switch (c) {
        case '"': dest.append(std::string_view{"\\\""}); break;
        case '\\': dest.append(std::string_view{"\\\\"}); break;
        case '\n': dest.append(std::string_view{"\\n"}); break;
        case '\r': dest.append(std::string_view{"\\r"}); break;
        case '\t': dest.append(std::string_view{"\\t"}); break;
        default:
          if (static_cast<unsigned char>(c) < 0x20)
            fmt::format_to(std::back_inserter(dest), "\\u{:04x}", static_cast<unsigned>(c));
          else
            dest.push_back(c);
      }
    }
  }
};

std::mutex mu;
spdlog::sink_ptr sink;
spdlog::level::level_enum current = spdlog::level::info;

spdlog::sink_ptr make_sink(log_style style) {
  auto s = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  if (style == log_style::json) s->set_formatter(std::make_unique<json_formatter>());
  else
    s->set_formatter(std::make_unique<spdlog::pattern_formatter>(
        "%Y-%m-%dT%H:%M:%S.%eZ %l [%n] %v", spdlog::pattern_time_type::utc));
  return s;
}

}  // namespace

bool init_logging(log_style style, const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") return false;
  std::lock_guard lock{mu};
  sink = make_sink(style);
  current = lvl;
  spdlog::drop_all();
  auto def = std::make_shared<spdlog::logger>("main", sink);
  def->set_level(lvl);
  spdlog::set_default_logger(def);
  return true;
}

std::shared_ptr<spdlog::logger> logger(const std::string& name) {
  if (auto l = spdlog::get(name)) return l;
  std::lock_guard lock{mu};
  if (auto l = spdlog::get(name)) return l;
  if (!sink) sink = make_sink(log_style::text);
  auto l = std::make_shared<spdlog::logger>(name, sink);
  l->set_level(current);
  l->flush_on(spdlog::level::trace);
  spdlog::register_logger(l);
  return l;
}

}  // namespace xo
