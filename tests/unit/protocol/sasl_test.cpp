#include "common/base64.hpp"
#include "protocol/common/sasl.hpp"

#include <gtest/gtest.h>

using namespace xo::protocol;

TEST(SaslPlain, DecodesWithAndWithoutAuthzid) {
  // protocol-notes §2.3 examples.
  auto r = decode_plain("AGFsaWNlQGNvbnRvc28uY29tAHBhIHNzIndccmQ=");
  ASSERT_TRUE(r.creds);
  EXPECT_EQ(r.creds->authzid, "");
  EXPECT_EQ(r.creds->authcid, "alice@contoso.com");
  EXPECT_EQ(r.creds->password.reveal(), "pa ss\"w\\rd");
  r = decode_plain("c2hhcmVkQGNvbnRvc28uY29tAGFsaWNlQGNvbnRvc28uY29tAHNlY3JldA==");
  ASSERT_TRUE(r.creds);
  EXPECT_EQ(r.creds->authzid, "shared@contoso.com");
  EXPECT_EQ(r.creds->authcid, "alice@contoso.com");
  EXPECT_EQ(r.creds->password.reveal(), "secret");
}

TEST(SaslPlain, RejectsMalformedMessages) {
  using xo::base64_encode;
  for (std::string raw : {std::string{"nonul"}, std::string{"\0onlyone", 8},
                          std::string{"\0\0pw", 4}, std::string{"\0user\0", 6},
                          std::string{"a\0b\0c\0d", 7}}) {
    auto r = decode_plain(base64_encode(raw));
    EXPECT_FALSE(r.creds);
    EXPECT_EQ(r.error, sasl_error::malformed);
  }
}

TEST(SaslPlain, RejectsBadBase64) {
  for (const char* b : {"!!!!", "AGF", "AG=h", "AGFsaWNl\r\n", "A===", " AGFs"}) {
    auto r = decode_plain(b);
    EXPECT_FALSE(r.creds) << b;
    EXPECT_EQ(r.error, sasl_error::bad_base64) << b;
  }
}

TEST(SaslPlain, KeepsEightBitBytes) {
  auto r = decode_plain(xo::base64_encode(std::string{"\0j\xC3\xBCrgen\0p\xC3\xA4ss \xFF", 16}));
  ASSERT_TRUE(r.creds);
  EXPECT_EQ(r.creds->authcid, "j\xC3\xBCrgen");
  EXPECT_EQ(r.creds->password.reveal(), "p\xC3\xA4ss \xFF");
}

TEST(Xoauth2, InitialResponseMatchesTheDocumentedExample) {
  // protocol-notes §2.1 example with a fake token.
  auto ir = xoauth2_initial_response("alice@contoso.com", xo::secret{"eyJ0eXAi.FAKE.TOKEN"});
  EXPECT_EQ(ir.reveal(),
            "dXNlcj1hbGljZUBjb250b3NvLmNvbQFhdXRoPUJlYXJlciBleUowZVhBaS5GQUtFLlRPS0VOAQE=");
  EXPECT_EQ(fmt::format("{}", ir), "[redacted]");
}

TEST(Base64, RoundTripAndStrictness) {
  for (std::string s : {std::string{}, std::string{"a"}, std::string{"ab"}, std::string{"abc"},
                        std::string{"\0\xff\x01", 3}}) {
    auto d = xo::base64_decode(xo::base64_encode(s));
    ASSERT_TRUE(d);
    EXPECT_EQ(*d, s);
  }
  EXPECT_FALSE(xo::base64_decode("YQ=a"));
  EXPECT_FALSE(xo::base64_decode("Y"));
  EXPECT_EQ(xo::base64url_encode("\xfb\xff"), "-_8");
}
