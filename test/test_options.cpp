// test_options.cpp: the one option parser (options.h) that ./train, ./sample and the debug state share: numbers are
// parsed whole and never wrap, ranges hold, and every error names the option and the value.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <vector>

#include "options.h"
#include "trainer.h"

namespace {

struct Fields {
    int steps = 10, threads = 0;
    long long length = 5;
    uint64_t seed = 1;
    double lr = 0.5;
    std::string name = "x";
    bool quiet = false;
};

OptionTable table(Fields& f) {
    OptionTable t;
    t.add("steps", f.steps, "steps", 0, 2147483647);
    t.add("threads", f.threads, "threads", 0, 1024);
    t.add("length", f.length, "length", 0, 1ll << 62);
    t.add("seed", f.seed, "seed");
    t.add("lr", f.lr, "learning rate", 0, 10);
    t.add("name", f.name, "a name");
    t.add_flag("quiet", f.quiet, "no output");
    return t;
}

// Parses argv and returns the error message ("" when it parsed).
std::string error_of(std::vector<const char*> args) {
    Fields f;
    args.insert(args.begin(), "prog");
    try {
        table(f).parse((int)args.size(), (char**)args.data());
    } catch (const flash_error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("options parse every type from the command line and from JSON") {
    Fields f;
    OptionTable t = table(f);
    const char* argv[] = {"prog", "--steps", "2147483647", "--seed", "18446744073709551615", "--lr", "1e-3",
                          "--name", "123", "--quiet", "--threads", "0"};
    t.parse(12, (char**)argv);
    CHECK(f.steps == 2147483647);
    CHECK(f.seed == 18446744073709551615ull);
    CHECK(f.lr == 1e-3);
    CHECK(f.name == "123");
    CHECK(f.quiet);
    t.set_all_json(nlohmann::json{{"steps", 7}, {"lr", 2}, {"name", "y"}, {"quiet", false}}, "test");
    CHECK(f.steps == 7);
    CHECK(f.lr == 2.0);
    CHECK(f.name == "y");
    CHECK(!f.quiet);
}

TEST_CASE("integers never wrap, and a bad number names the option and the value") {
    CHECK(error_of({"--steps", "4294967297"}).find("option --steps: 4294967297 is out of range") != std::string::npos);
    CHECK(error_of({"--steps", "99999999999999999999999"}).find("option --steps: 99999999999999999999999 is out of range") !=
          std::string::npos);
    CHECK(error_of({"--steps", "-1"}).find("option --steps: -1 is out of range") != std::string::npos);
    CHECK(error_of({"--steps", "12x"}).find("option --steps: '12x' is not an integer") != std::string::npos);
    CHECK(error_of({"--steps", "1.5"}).find("option --steps: '1.5' is not an integer") != std::string::npos);
    CHECK(error_of({"--steps", ""}).find("option --steps: '' is not an integer") != std::string::npos);
    CHECK(error_of({"--seed", "-1"}).find("option --seed: '-1' is not a non-negative integer") != std::string::npos);
    CHECK(error_of({"--seed", "18446744073709551616"}).find("option --seed: 18446744073709551616 is out of range") !=
          std::string::npos);
    CHECK(error_of({"--lr", "fast"}).find("option --lr: 'fast' is not a number") != std::string::npos);
    CHECK(error_of({"--lr", "nan"}).find("option --lr: 'nan' is not a number") != std::string::npos);
    CHECK(error_of({"--lr", "11"}).find("option --lr: 11 is out of range") != std::string::npos);
    CHECK(error_of({"--bogus", "1"}).find("unknown option '--bogus'") != std::string::npos);
    CHECK(error_of({"--steps"}).find("option --steps needs a value") != std::string::npos);
    CHECK(error_of({"steps"}).find("unexpected argument 'steps'") != std::string::npos);
    CHECK(error_of({"--steps", "0", "--length", "4611686018427387904"}) == "");
}

TEST_CASE("--threads is bounded: 0 (all cores) to 1024") {
    CHECK(error_of({"--threads", "0"}) == "");
    CHECK(error_of({"--threads", "1024"}) == "");
    const std::string e = error_of({"--threads", "1025"});
    CHECK(e.find("option --threads: 1025 is out of range") != std::string::npos);
    CHECK(e.find("0..1024") != std::string::npos);
}

TEST_CASE("JSON values get the same checks: no wrapping, no wrong types") {
    Fields f;
    OptionTable t = table(f);
    CHECK_THROWS_WITH_AS(t.set_json("steps", nlohmann::json(4294967297ll)),
                         doctest::Contains("option --steps: 4294967297 is out of range"), flash_error);
    CHECK_THROWS_WITH_AS(t.set_json("steps", nlohmann::json(1.5)),
                         doctest::Contains("option 'steps' must be an integer, got 1.5"), flash_error);
    CHECK_THROWS_WITH_AS(t.set_json("seed", nlohmann::json(-3)),
                         doctest::Contains("option --seed: '-3' is not a non-negative integer"), flash_error);
    CHECK_THROWS_WITH_AS(t.set_json("name", nlohmann::json(3)), doctest::Contains("option 'name' must be a string, got 3"),
                         flash_error);
    CHECK(f.steps == 10);  // a refused value leaves the field as it was
}

TEST_CASE("./train's options use the parser: --threads above 1024 and a wrapping --steps are refused") {
    const char* threads[] = {"train", "--threads", "5000"};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)threads), doctest::Contains("option --threads: 5000 is out of range"),
                         flash_error);
    const char* steps[] = {"train", "--steps", "4294967297"};
    CHECK_THROWS_WITH_AS(parse_train_options(3, (char**)steps), doctest::Contains("option --steps: 4294967297 is out of range"),
                         flash_error);
}
