#pragma once
// Reading a password from a terminal or a pipe without echoing it.
#include "common/secret.hpp"

#include <optional>
#include <string_view>

namespace xo::app {

// One line from in_fd (CR/LF stripped). When in_fd is a terminal, `prompt` goes to prompt_fd and
// echo is off while the line is typed. Nullopt on end of input or an empty line.
std::optional<secret> read_hidden_line(int in_fd, int prompt_fd, std::string_view prompt);

}  // namespace xo::app
