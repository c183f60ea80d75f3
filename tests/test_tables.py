"""Tables as a reader sees them: intervals in one cell, human headers, no index, the same page on a re-run."""

import math

import pandas as pd
import pytest

from emocircuits.tables import interval, push_label, show


def test_interval_prints_an_estimate_with_its_interval_or_alone():
    assert interval(0.7912, 0.71, 0.864) == "0.79 [0.71, 0.86]"
    assert interval(3.0, None, None, digits=1) == "3.0"
    assert interval(0.5, math.nan, 0.6) == "0.50"
    assert interval(math.nan) == "-"


def test_show_merges_intervals_renames_hides_the_index_and_is_stable():
    df = pd.DataFrame({"layer": [5, 15], "score": [0.5, 0.61234], "score_lo": [0.4, math.nan],
                       "score_hi": [0.6, 0.7], "n": [3, 4], "alpha_rms": [1.0, 2.0]})
    style = show(df, {"layer": "layer", "score": "judged empathy [95% CI]", "n": "replies"}, intervals=["score"])
    shown = style.data
    assert list(shown.columns) == ["layer", "judged empathy [95% CI]", "replies"]
    assert list(shown["judged empathy [95% CI]"]) == ["0.50 [0.40, 0.60]", "0.61"]
    html = style.to_html()
    assert ">0.50 [0.40, 0.60]<" in html and "alpha_rms" not in html and "score_lo" not in html
    assert 'class="row_heading' not in html  # no index column
    assert show(df, intervals=["score"]).to_html() == show(df, intervals=["score"]).to_html()  # same ids each run
    assert 'class="row_heading' in show(df.set_index("layer"), index=True).to_html()
    assert df.columns.tolist()[-1] == "alpha_rms"  # the chapter's frame is not changed


def test_show_names_what_is_missing():
    df = pd.DataFrame({"score": [0.5], "score_lo": [0.4]})
    with pytest.raises(KeyError, match="needs columns 'score', 'score_lo' and 'score_hi'; missing \\['score_hi'\\]"):
        show(df, intervals=["score"])
    with pytest.raises(KeyError, match=r"columns: \['nope'\] are not in the table"):
        show(df, {"nope": "x"})
    with pytest.raises(TypeError, match="df must be a pandas DataFrame"):
        show([1, 2])


def test_a_section_result_is_one_boxed_admonition():
    from emocircuits.page import result

    box = result("  The probe reads 0.91 [0.86, 0.97] (random: 0.75). ")
    assert box.data == (":::{admonition} Result\n:class: result\n\nThe probe reads 0.91 [0.86, 0.97] (random: "
                        "0.75).\n:::\n")
    with pytest.raises(ValueError, match="non-empty sentence"):
        result(" ")
    with pytest.raises(ValueError, match="must not contain ':::'"):
        result("a ::: b")


def test_push_labels_say_the_strength_in_the_units_it_was_given_in():
    assert push_label(0, "rms") == "0 (unpushed)"
    assert push_label(0.5, "rms") == "+0.5 x RMS" and push_label(-0.5, "rms", both=True) == "±0.5 x RMS"
    assert push_label(-5, "unit", rms=6.25) == "-5 x unit vector (-0.80 x RMS)"
    assert push_label(5, "unit") == "+5 x unit vector"
