#include "protocol/common/line_buffer.hpp"

#include <utility>

namespace xo::protocol {

std::optional<std::string> line_buffer::pop_line() {
  auto lf = buf_.find('\n');
  if (lf == std::string::npos) return std::nullopt;
  // A line over the limit is refused however it arrived (in one read or many): overflow() is
  // then true and the caller answers "line too long".
  if (lf > max_line_ + 1) return std::nullopt;
  std::size_t end = lf;
  if (end > 0 && buf_[end - 1] == '\r') --end;
  std::string line = buf_.substr(0, end);
  buf_.erase(0, lf + 1);
  return line;
}

bool line_buffer::overflow() const {
  auto lf = buf_.find('\n');
  if (lf == std::string::npos) return buf_.size() > max_line_;
  return lf > max_line_ + 1;  // the +1 leaves room for the CR of CRLF
}

}  // namespace xo::protocol
