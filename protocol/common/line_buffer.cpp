#include "protocol/common/line_buffer.hpp"

#include <utility>

namespace xo::protocol {

std::optional<std::string> line_buffer::pop_line() {
  auto lf = buf_.find('\n');
  if (lf == std::string::npos) return std::nullopt;
  std::size_t end = lf;
  if (end > 0 && buf_[end - 1] == '\r') --end;
  std::string line = buf_.substr(0, end);
  buf_.erase(0, lf + 1);
  return line;
}

bool line_buffer::overflow() const {
  auto lf = buf_.find('\n');
  std::size_t partial = lf == std::string::npos ? buf_.size() : lf;
  return partial > max_line_;
}

}  // namespace xo::protocol
