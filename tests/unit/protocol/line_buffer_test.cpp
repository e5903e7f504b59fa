#include "protocol/common/line_buffer.hpp"

#include <gtest/gtest.h>

using xo::protocol::line_buffer;

TEST(LineBuffer, SplitsCrlfAndBareLf) {
  line_buffer b{100};
  b.append("a\r\nb\nc");
  EXPECT_EQ(*b.pop_line(), "a");
  EXPECT_EQ(*b.pop_line(), "b");
  EXPECT_FALSE(b.pop_line());
  b.append("\r\n");
  EXPECT_EQ(*b.pop_line(), "c");
  EXPECT_TRUE(b.empty());
}

TEST(LineBuffer, LimitHoldsHoweverTheLineArrives) {
  for (bool one_read : {true, false}) {
    line_buffer b{10};
    if (one_read) {
      b.append("0123456789AB\r\n");
    } else {
      b.append("0123456789A");
      EXPECT_TRUE(b.overflow());
      b.append("B\r\n");
    }
    EXPECT_FALSE(b.pop_line());
    EXPECT_TRUE(b.overflow());
  }
  line_buffer ok{10};
  ok.append("0123456789\r\n");  // exactly the limit, CRLF not counted
  EXPECT_FALSE(ok.overflow());
  EXPECT_EQ(*ok.pop_line(), "0123456789");
}
