#include "app/terminal.hpp"

#include <openssl/crypto.h>
#include <termios.h>
#include <unistd.h>

#include <string>

namespace xo::app {

std::optional<secret> read_hidden_line(int in_fd, int prompt_fd, std::string_view prompt) {
  const bool tty = isatty(in_fd) == 1;
  termios old{};
  if (tty) {
    (void)!::write(prompt_fd, prompt.data(), prompt.size());
    tcgetattr(in_fd, &old);
    termios silent = old;
    silent.c_lflag &= static_cast<tcflag_t>(~ECHO);
    tcsetattr(in_fd, TCSANOW, &silent);
  }
  std::string line;
  char ch = 0;
  while (::read(in_fd, &ch, 1) == 1 && ch != '\n') line.push_back(ch);
  if (tty) {
    tcsetattr(in_fd, TCSANOW, &old);
    (void)!::write(prompt_fd, "\n", 1);
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.empty()) return std::nullopt;
  secret s{line};
  OPENSSL_cleanse(line.data(), line.size());
  return s;
}

}  // namespace xo::app
