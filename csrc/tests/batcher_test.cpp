// The batcher's one rule its Python tests (tests/test_batcher.py) cannot see: a caller is
// answered only after its batch has stopped counting as running, else a lone caller's next
// request would find it still running and wait max_delay for company.
#include <gtest/gtest.h>

#include <future>
#include <vector>

#include "../batcher.h"

namespace seq2seq {
namespace {

TEST(Batcher, ABatchStopsCountingAsRunningBeforeItsCallersHearBack) {
  Batcher batcher(
      [](const std::vector<std::vector<int64_t>>& sources, const DecodeOptions&, const Abandoned&) {
        return Results(sources.size(), std::vector<Hypothesis>(1));
      },
      /*max_batch=*/64, /*max_tokens=*/16384, /*max_delay_s=*/5.0, /*max_queue=*/64, /*workers=*/2);
  for (int i = 0; i < 3; ++i) {
    std::promise<int64_t> running_when_answered;
    const auto done_for = [&](size_t, size_t) {
      // Runs in the worker, at the moment the caller is answered.
      return [&](Outcome outcome) {
        EXPECT_EQ(outcome.kind, Outcome::kDone);
        running_when_answered.set_value(batcher.running());
      };
    };
    std::string why;
    ASSERT_TRUE(batcher.submit({{5}}, DecodeOptions{}, std::nullopt, nullptr, done_for, "c", &why)) << why;
    EXPECT_EQ(running_when_answered.get_future().get(), 0);
  }
  batcher.close();
  EXPECT_EQ(batcher.stats().batches, 3u);
}

}  // namespace
}  // namespace seq2seq
