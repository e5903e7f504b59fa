// Runs the corpus through the fuzz targets without libFuzzer, so that every compiler (GCC in CI)
// exercises every seed and every input that ever crashed a target (style.md §4.12).
//
//   fuzz_replay                     every file of <corpus>/fuzz_<target>/ for every target
//   fuzz_replay DIR                 the same with DIR as <corpus>
//   fuzz_replay TARGET FILE...      the given files through one target, e.g. to reproduce a
//                                   crash: fuzz_replay fuzz_imap_flow tests/fuzz/crashes/x
// A broken invariant aborts (exit by signal); so does an input that runs longer than
// XO_FUZZ_TIMEOUT seconds (default 10: a hang, libFuzzer's -timeout). A missing or empty corpus
// directory is an error.
#include "fuzz_common.hpp"

#include <csignal>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <set>
#include <vector>

#ifndef XO_FUZZ_CORPUS_DIR
#error "XO_FUZZ_CORPUS_DIR must name tests/fuzz/corpus"
#endif

namespace {

namespace fs = std::filesystem;

struct target {
  const char* name;
  int (*run)(const std::uint8_t*, std::size_t);
};

#define XO_FUZZ_ROW(n) target{"fuzz_" #n, &xo_fuzz_##n},
const target targets[] = {XO_FUZZ_TARGETS(XO_FUZZ_ROW)};
#undef XO_FUZZ_ROW

// The input being run, for the timeout message (written from a signal handler).
char current[4096];

extern "C" void on_timeout(int) {
  static const char msg[] = "\n*** fuzz_replay: input runs too long (a hang?): ";
  (void)!::write(2, msg, sizeof msg - 1);
  (void)!::write(2, current, std::strlen(current));
  (void)!::write(2, "\n", 1);
  std::abort();
}

unsigned timeout_seconds() {
  const char* v = std::getenv("XO_FUZZ_TIMEOUT");
  int n = v ? std::atoi(v) : 10;
  return n > 0 ? static_cast<unsigned>(n) : 10;
}

bool run_file(const target& t, const fs::path& p) {
  std::snprintf(current, sizeof current, "%s %s", t.name, p.c_str());
  std::ifstream f{p, std::ios::binary};
  if (!f) {
    std::cerr << "fuzz_replay: cannot read " << p << "\n";
    return false;
  }
  std::vector<char> buf{std::istreambuf_iterator<char>{f}, std::istreambuf_iterator<char>{}};
  static const std::uint8_t empty = 0;
  const auto* d = buf.empty() ? &empty : reinterpret_cast<const std::uint8_t*>(buf.data());
  ::alarm(timeout_seconds());
  t.run(d, buf.size());
  ::alarm(0);
  return true;
}

const target* find(std::string_view name) {
  for (const auto& t : targets)
    if (name == t.name) return &t;
  return nullptr;
}

int replay_all(const fs::path& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    std::cerr << "fuzz_replay: no corpus directory " << root << "\n";
    return 1;
  }
  int status = 0;
  std::set<std::string> known;
  std::size_t total = 0;
  for (const auto& t : targets) {
    known.insert(t.name);
    const fs::path dir = root / t.name;
    std::vector<fs::path> files;
    if (fs::is_directory(dir, ec))
      for (const auto& e : fs::directory_iterator{dir})
        if (e.is_regular_file()) files.push_back(e.path());
    if (files.empty()) {
      std::cerr << "fuzz_replay: " << t.name << ": no inputs in " << dir << "\n";
      status = 1;
      continue;
    }
    std::sort(files.begin(), files.end());
    for (const auto& p : files) {
      if (!run_file(t, p)) status = 1;
    }
    std::cout << "fuzz_replay: " << t.name << ": " << files.size() << " inputs ok" << std::endl;
    total += files.size();
  }
  for (const auto& e : fs::directory_iterator{root}) {
    if (e.is_directory() && !known.count(e.path().filename().string())) {
      std::cerr << "fuzz_replay: " << e.path() << " is not a target's corpus\n";
      status = 1;
    }
  }
  std::cout << "fuzz_replay: " << total << " inputs in total\n";
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGALRM, on_timeout);
  if (argc >= 3) {
    const target* t = find(argv[1]);
    if (!t) {
      std::cerr << "fuzz_replay: unknown target " << argv[1] << "; targets:";
      for (const auto& x : targets) std::cerr << " " << x.name;
      std::cerr << "\n";
      return 2;
    }
    int status = 0;
    for (int i = 2; i < argc; ++i) {
      std::cout << "fuzz_replay: " << t->name << " " << argv[i] << "\n" << std::flush;
      if (!run_file(*t, argv[i])) status = 1;
    }
    return status;
  }
  return replay_all(argc == 2 ? fs::path{argv[1]} : fs::path{XO_FUZZ_CORPUS_DIR});
}
