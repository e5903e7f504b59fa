#pragma once
// The encrypted token store under state_dir (issue 5): one file per account, AES-256-GCM
// (OpenSSL EVP) with the account name as associated data, so a file cannot be moved to another
// account. Written atomically: a temporary file opened O_EXCL with mode 0600, fsync, rename,
// fsync of the directory. A corrupted or undecryptable entry is reported, never silently
// replaced. No token is ever written in plaintext.
//
// Keys: 32 bytes per account, either derived from a key file (HKDF-SHA-256 over the file's 32
// bytes, with the account name as info) for unattended accounts, or derived from the account's
// local password with argon2id (salt stored in the file header) for accounts whose tokens should
// open only with the password.
#include "common/secret.hpp"

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace xo::auth {

struct stored_grant {
  std::string account;      // the [[account]] login this grant belongs to
  std::string provider;     // provider name, client_id and tenant at the time of issue:
  std::string client_id;    // a refresh token must be redeemed by the same client
  std::string tenant;
  secret refresh_token;
  secret access_token;
  std::int64_t access_expires_unix = 0;
  std::string scope;
  std::string state = "authorized";  // authorized | needs_authorization
  std::string last_error;            // safe summary of the last identity-platform error
  std::int64_t updated_unix = 0;
};

using store_key = std::array<unsigned char, 32>;

enum class store_errc { ok, not_found, corrupt, wrong_key, io };
std::string_view to_string(store_errc e);

struct store_load {
  std::optional<stored_grant> grant;
  store_errc error = store_errc::ok;
  std::string detail;  // file path and reason; never key material or token text
};

// A key derived from a password (argon2id) together with the salt it was derived with, so an
// entry can be re-written after every refresh without running argon2 again.
struct password_key {
  store_key key{};
  std::array<unsigned char, 16> salt{};
};

class token_store {
 public:
  // dir: "<state_dir>/tokens" (created with mode 0700 on first save).
  explicit token_store(std::filesystem::path dir);

  // The key for `account` from a 32-byte key file's contents.
  static store_key key_from_file_bytes(const secret& file_bytes, std::string_view account);
  // Reads a key file: exactly 32 bytes (raw) or 64 hex digits / 44 base64 characters plus an
  // optional newline. Nullopt with a reason in `why` otherwise.
  static std::optional<secret> read_key_file(const std::filesystem::path& p, std::string& why);

  store_load load(std::string_view account, const store_key& key) const;
  // Password-protected entries: the salt lives in the file, so the key is derived here.
  // When `key_out` is given and the entry opens, it receives the derived key and salt.
  store_load load_with_password(std::string_view account, const secret& password,
                                password_key* key_out = nullptr) const;
  // A fresh salt and the key derived from it (argon2id: tens of milliseconds; not on an I/O
  // thread). Nullopt only when the system has no randomness.
  static std::optional<password_key> new_password_key(const secret& password);

  // Replaces the account's entry. An existing entry that cannot be decrypted with `key` is kept
  // (renamed to *.unreadable-<time>) only when replace_unreadable is true; otherwise the save
  // fails with wrong_key/corrupt, so nothing is lost by accident.
  store_errc save(const stored_grant& g, const store_key& key, std::string& detail,
                  bool replace_unreadable = false);
  store_errc save_with_password(const stored_grant& g, const secret& password,
                                std::string& detail, bool replace_unreadable = false);
  // Same, with a key derived before. An existing entry written with another salt (another
  // password) is kept unless replace_unreadable, as for save().
  store_errc save_with_password_key(const stored_grant& g, const password_key& k,
                                    std::string& detail, bool replace_unreadable = false);
  bool exists(std::string_view account) const;

  std::filesystem::path path_of(std::string_view account) const;

 private:
  store_errc write_file(const stored_grant& g, const store_key& key, std::uint8_t kind,
                        const std::array<unsigned char, 16>& salt, std::string& detail,
                        bool replace_unreadable, bool check_existing_password = false);
  std::filesystem::path dir_;
};

}  // namespace xo::auth
