#include "auth/token_store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iterator>

using namespace xo::auth;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    char tmpl[] = "/tmp/xo-store-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~temp_dir() { fs::remove_all(path); }
};

stored_grant sample(std::string account = "alice@contoso.com") {
  stored_grant g;
  g.account = std::move(account);
  g.provider = "contoso";
  g.client_id = "cid";
  g.tenant = "contoso.onmicrosoft.com";
  g.refresh_token = xo::secret{"0.AAAA-refresh-token-value"};
  g.access_token = xo::secret{"eyJ0eXAiOiJKV1Qi.access.token"};
  g.access_expires_unix = 1900000000;
  g.scope = "https://outlook.office.com/IMAP.AccessAsUser.All offline_access";
  g.updated_unix = 1800000000;
  return g;
}

store_key key_for(std::string_view account, char fill = 'k') {
  return token_store::key_from_file_bytes(xo::secret{std::string(32, fill)}, account);
}

std::string slurp(const fs::path& p) {
  std::ifstream f{p, std::ios::binary};
  return {std::istreambuf_iterator<char>{f}, {}};
}

}  // namespace

TEST(TokenStore, RoundTripWithKeyFileKey) {
  temp_dir d;
  token_store s{d.path / "tokens"};
  std::string detail;
  ASSERT_EQ(s.save(sample(), key_for("alice@contoso.com"), detail), store_errc::ok) << detail;
  auto r = s.load("alice@contoso.com", key_for("alice@contoso.com"));
  ASSERT_EQ(r.error, store_errc::ok) << r.detail;
  EXPECT_EQ(r.grant->refresh_token.reveal(), "0.AAAA-refresh-token-value");
  EXPECT_EQ(r.grant->access_token.reveal(), "eyJ0eXAiOiJKV1Qi.access.token");
  EXPECT_EQ(r.grant->access_expires_unix, 1900000000);
  EXPECT_EQ(r.grant->scope, sample().scope);
  EXPECT_EQ(r.grant->state, "authorized");
}

TEST(TokenStore, NothingInPlaintextAndMode0600) {
  temp_dir d;
  token_store s{d.path / "tokens"};
  std::string detail;
  ASSERT_EQ(s.save(sample(), key_for("alice@contoso.com"), detail), store_errc::ok);
  auto path = s.path_of("alice@contoso.com");
  std::string raw = slurp(path);
  EXPECT_EQ(raw.find("refresh-token-value"), std::string::npos);
  EXPECT_EQ(raw.find("alice"), std::string::npos);
  EXPECT_EQ(path.filename().string().find("alice"), std::string::npos);
  struct stat st{};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat((d.path / "tokens").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
}

TEST(TokenStore, WrongKeyTamperingAndAnotherAccountsFileAreRefused) {
  temp_dir d;
  token_store s{d.path / "tokens"};
  std::string detail;
  ASSERT_EQ(s.save(sample(), key_for("alice@contoso.com"), detail), store_errc::ok);
  EXPECT_EQ(s.load("alice@contoso.com", key_for("alice@contoso.com", 'x')).error,
            store_errc::wrong_key);
  // Bob's name on Alice's file: the account is associated data, so the tag fails.
  fs::copy_file(s.path_of("alice@contoso.com"), s.path_of("bob@contoso.com"));
  EXPECT_EQ(s.load("bob@contoso.com", key_for("alice@contoso.com")).error, store_errc::wrong_key);
  // One flipped bit anywhere in the ciphertext.
  auto path = s.path_of("alice@contoso.com");
  std::string raw = slurp(path);
  raw[raw.size() - 20] ^= 0x01;
  std::ofstream{path, std::ios::binary | std::ios::trunc} << raw;
  EXPECT_EQ(s.load("alice@contoso.com", key_for("alice@contoso.com")).error, store_errc::wrong_key);
  std::ofstream{path, std::ios::binary | std::ios::trunc} << "garbage";
  EXPECT_EQ(s.load("alice@contoso.com", key_for("alice@contoso.com")).error, store_errc::corrupt);
  EXPECT_EQ(s.load("carol@contoso.com", key_for("carol@contoso.com")).error, store_errc::not_found);
}

TEST(TokenStore, UnreadableEntryIsNeverSilentlyReplaced) {
  temp_dir d;
  token_store s{d.path / "tokens"};
  std::string detail;
  ASSERT_EQ(s.save(sample(), key_for("alice@contoso.com"), detail), store_errc::ok);
  auto other = key_for("alice@contoso.com", 'z');
  EXPECT_EQ(s.save(sample(), other, detail), store_errc::wrong_key);
  EXPECT_EQ(s.load("alice@contoso.com", key_for("alice@contoso.com")).error, store_errc::ok);
  EXPECT_EQ(s.save(sample(), other, detail, true), store_errc::ok);
  EXPECT_EQ(s.load("alice@contoso.com", other).error, store_errc::ok);
  int kept = 0;
  for (auto& e : fs::directory_iterator(d.path / "tokens"))
    kept += e.path().string().find(".unreadable-") != std::string::npos;
  EXPECT_EQ(kept, 1);
}

TEST(TokenStore, PasswordProtectedEntries) {
  temp_dir d;
  token_store s{d.path / "tokens"};
  std::string detail;
  ASSERT_EQ(s.save_with_password(sample(), xo::secret{"pw 1"}, detail), store_errc::ok) << detail;
  auto r = s.load_with_password("alice@contoso.com", xo::secret{"pw 1"});
  ASSERT_EQ(r.error, store_errc::ok) << r.detail;
  EXPECT_EQ(r.grant->refresh_token.reveal(), "0.AAAA-refresh-token-value");
  EXPECT_EQ(s.load_with_password("alice@contoso.com", xo::secret{"pw 2"}).error,
            store_errc::wrong_key);
  EXPECT_EQ(s.load("alice@contoso.com", key_for("alice@contoso.com")).error, store_errc::wrong_key);
}

TEST(TokenStore, KeyFileFormats) {
  temp_dir d;
  std::string why;
  auto write = [&](const char* name, const std::string& content) {
    std::ofstream{d.path / name, std::ios::binary} << content;
    return d.path / name;
  };
  auto raw = token_store::read_key_file(write("raw", std::string(32, '\x07')), why);
  ASSERT_TRUE(raw);
  auto hex = token_store::read_key_file(write("hex", std::string(64, 'a') + "\n"), why);
  ASSERT_TRUE(hex);
  EXPECT_EQ(hex->reveal(), std::string(32, '\xaa'));
  auto b64 = token_store::read_key_file(
      write("b64", "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"), why);
  ASSERT_TRUE(b64);
  EXPECT_EQ(b64->reveal(), std::string(32, '\x07'));
  EXPECT_FALSE(token_store::read_key_file(write("short", "abc"), why));
  EXPECT_NE(why.find("32 random bytes"), std::string::npos);
  EXPECT_FALSE(token_store::read_key_file(d.path / "missing", why));
  // Different accounts get different keys from the same file.
  EXPECT_NE(key_for("a@b.c"), key_for("d@b.c"));
}

TEST(TokenStore, DerivedPasswordKeyIsReusedAndAnotherPasswordsEntryIsKept) {
  temp_dir d;
  token_store s{d.path / "tokens"};
  auto k = token_store::new_password_key(xo::secret{"local pw"});
  ASSERT_TRUE(k);
  std::string detail;
  ASSERT_EQ(s.save_with_password_key(sample(), *k, detail), store_errc::ok) << detail;
  // A rotated refresh token is written again with the same derived key (no new argon2 run).
  auto g = sample();
  g.refresh_token = xo::secret{"0.AAAA-rotated"};
  ASSERT_EQ(s.save_with_password_key(g, *k, detail), store_errc::ok) << detail;

  password_key opened;
  auto r = s.load_with_password("alice@contoso.com", xo::secret{"local pw"}, &opened);
  ASSERT_EQ(r.error, store_errc::ok) << r.detail;
  EXPECT_EQ(r.grant->refresh_token.reveal(), "0.AAAA-rotated");
  EXPECT_EQ(opened.key, k->key);
  EXPECT_EQ(opened.salt, k->salt);
  EXPECT_EQ(s.load_with_password("alice@contoso.com", xo::secret{"other"}).error,
            store_errc::wrong_key);

  // A key from another password must not overwrite the entry unless told to.
  auto other = token_store::new_password_key(xo::secret{"new pw"});
  ASSERT_TRUE(other);
  EXPECT_EQ(s.save_with_password_key(sample(), *other, detail), store_errc::wrong_key);
  EXPECT_EQ(s.load_with_password("alice@contoso.com", xo::secret{"local pw"}).error,
            store_errc::ok);
  EXPECT_EQ(s.save_with_password_key(sample(), *other, detail, true), store_errc::ok) << detail;
  EXPECT_EQ(s.load_with_password("alice@contoso.com", xo::secret{"new pw"}).error, store_errc::ok);
  bool set_aside = false;
  for (const auto& e : fs::directory_iterator(d.path / "tokens"))
    set_aside = set_aside || e.path().string().find(".unreadable-") != std::string::npos;
  EXPECT_TRUE(set_aside);
}
