#pragma once
// Sender safety after an SMTP login (sans I/O): checks every MAIL FROM of the relayed session
// against the account's allowed_from patterns ("scanner@contoso.com", "*@contoso.com") before it
// reaches the upstream server.
//
// A refused MAIL is not forwarded; a NOOP takes its place upstream and the NOOP's reply is
// replaced by "550 5.7.1 ..." on its way back, so replies stay in order with pipelining and each
// direction is written by one side only. Message bodies pass untouched: DATA bodies up to the
// "." line (only after the server's 354), and BDAT chunks by their byte count.
//
// The filter must never disagree with the server about where commands are (that is how a
// command would slip past it, as in SMTP smuggling). So: a "." line next to a bare LF, which
// some servers take as the end of the data and others do not, is dot-stuffed to ".." (it can
// then end the data for nobody); a BDAT that is not exactly "BDAT size [LAST]", and an overlong
// command line, are not forwarded (a NOOP goes instead, answered with 501/500); verbs are found
// after leading blanks and end at a space, a tab or a colon.
#include "protocol/smtp/reply_parser.hpp"

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace xo::protocol::smtp {

bool sender_allowed(std::string_view address, const std::vector<std::string>& patterns);

class sender_filter {
 public:
  explicit sender_filter(std::vector<std::string> allowed);

  // Client → upstream: appends what to send upstream to `out`. Input that follows a DATA
  // command is held until the server answered it (waiting() is then true).
  void from_client(std::string_view in, std::string& out);
  // Upstream → client: appends what to send to the client to `out`.
  void from_upstream(std::string_view in, std::string& out);
  // True while client input is held for the reply to DATA; call resume() after from_upstream().
  bool waiting() const noexcept { return mode_ == mode::data_reply && !held_.empty(); }
  void resume(std::string& out);
  // The server stopped speaking SMTP (or exceeded limits): the relay should end.
  bool broken() const noexcept { return broken_; }
  std::uint64_t refused() const noexcept { return refused_; }
  const std::string& last_refused() const noexcept { return last_refused_; }

 private:
  enum class mode { command, data_reply, data, bdat };
  enum class expect { normal, substitute, data };
  void process(std::string& out);
  void command_line(std::string line, std::string& out);
  void data_bytes(std::string& out);
  void dot_bytes(std::string& out);
  void substitute(std::string reply, std::string& out);

  std::vector<std::string> allowed_;
  mode mode_ = mode::command;
  std::string held_;           // client bytes not processed yet
  std::uint64_t bdat_left_ = 0;
  // DATA body scanning: 0 = inside a line, 1 = at a line start after CRLF, 2 = after a bare LF.
  int line_start_ = 1;
  char prev_ = '\n';
  bool discarding_ = false;    // skipping the rest of an overlong command line
  std::deque<expect> expected_;
  std::deque<std::string> substitutes_;
  reply_parser replies_;
  std::uint64_t refused_ = 0;
  std::string last_refused_;
  bool broken_ = false;
};

}  // namespace xo::protocol::smtp
