#include "proxy/state_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace xo::proxy {

state_lock::state_lock(const std::string& state_dir) {
  std::error_code ec;
  if (!std::filesystem::exists(state_dir, ec)) {
    std::filesystem::create_directories(state_dir, ec);
    if (!ec) ::chmod(state_dir.c_str(), 0700);
  }
  const std::string path = state_dir + "/xoauth-proxy.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    why_ = path + ": " + std::strerror(errno);
    return;
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    busy_ = errno == EWOULDBLOCK;
    why_ = busy_ ? path + ": in use by another xoauth-proxy process" : path + ": " + std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
  }
}

state_lock::~state_lock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace xo::proxy
