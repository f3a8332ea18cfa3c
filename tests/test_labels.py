import pytest

from hpa_pipeline.contract.labels import (
    CLASS_NAMES, FILTERS, N_CLASSES, REAL_CLASS_COUNTS, LabelError, format_target, parse_target,
    read_sample_table,
)

from .conftest import REAL_SAMPLE_SUBMISSION, REAL_TRAIN_CSV, need


def test_class_table_and_channel_order_follow_design():
    assert N_CLASSES == 28 and len(CLASS_NAMES) == 28 and len(REAL_CLASS_COUNTS) == 28
    assert CLASS_NAMES[0] == "Nucleoplasm" and CLASS_NAMES[27] == "Rods & rings"
    assert FILTERS == ("red", "green", "blue", "yellow")


def test_parse_and_format_target_round_trip():
    assert parse_target("16 0", "row 1") == (0, 16)
    assert parse_target(" 3  3 1 ", "row 1") == (1, 3)
    assert format_target([16, 0, 3]) == "0 3 16"


@pytest.mark.parametrize("text, message", [
    ("", "empty target"),
    ("   ", "empty target"),
    ("0 28", "label 28 is outside 0-27"),
    ("1 x", "label 'x' is not a non-negative integer"),
    ("-1", "label '-1' is not"),
    ("1.5", "label '1.5' is not"),
])
def test_bad_targets_name_the_line(tmp_path, text, message):
    csv = tmp_path / "train.csv"
    csv.write_text(f"Id,Target\naaa,0\nbbb,{text}\n")
    with pytest.raises(LabelError) as err:
        read_sample_table(csv)
    assert "train.csv line 3 (id bbb)" in str(err.value)
    assert message in str(err.value)


def test_duplicate_and_empty_ids_are_errors(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("Id,Target\naaa,0\nbbb,1\naaa,2\n")
    with pytest.raises(LabelError, match=r"line 4 \(id aaa\): duplicate id, first seen on line 2"):
        read_sample_table(csv)
    csv.write_text("Id,Target\n,0\n")
    with pytest.raises(LabelError, match="line 2.*empty id"):
        read_sample_table(csv)


def test_missing_id_column_is_an_error(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("Name,Target\naaa,0\n")
    with pytest.raises(LabelError, match="no 'Id' column"):
        read_sample_table(csv)


def test_real_train_csv_parses_with_the_documented_counts():
    table = read_sample_table(need(REAL_TRAIN_CSV))
    assert len(table) == 31072
    matrix = table.label_matrix()
    assert matrix.shape == (31072, 28) and matrix.dtype == bool
    assert matrix.sum() == 50782
    assert tuple(matrix.sum(0)) == REAL_CLASS_COUNTS


def test_real_sample_submission_is_ids_only():
    table = read_sample_table(need(REAL_SAMPLE_SUBMISSION))
    assert len(table) == 11702 and not table.has_labels
    with pytest.raises(LabelError):
        table.label_matrix()


@pytest.mark.parametrize("sample_id", ["00070df0-bbc3-11e8-b2bc-ac1f6b6435d0", "10580_1610_C1_1", "good00"])
def test_the_competitions_and_hpa_v18s_ids_are_sample_ids(tmp_path, sample_id):
    csv = tmp_path / "t.csv"
    csv.write_text(f"Id,Target\n{sample_id},0\n")
    assert read_sample_table(csv).ids == (sample_id,)


@pytest.mark.parametrize("sample_id", ["../../victim", "a/b", "a\\\\b", ".hidden", "x..y", "sp ace", "a*b", "x" * 201])
def test_an_id_that_could_leave_a_folder_is_refused_naming_the_line(tmp_path, sample_id):
    csv = tmp_path / "t.csv"
    csv.write_text(f"Id,Target\ngood,1\n{sample_id},0\n")
    with pytest.raises(LabelError, match=r"t.csv line 3 .*is not a sample id"):
        read_sample_table(csv)


@pytest.mark.parametrize("token", ["²", "٣", "³1"])
def test_a_unicode_digit_is_not_a_label(token):
    with pytest.raises(LabelError, match="is not a non-negative integer"):
        parse_target(f"1 {token}", "train.csv row 7 (id x)")


def test_messages_give_the_line_an_editor_shows_past_blank_lines_and_quoted_line_breaks(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text('Id,Target\n\naaa,0\n"b\nb",1\n\nccc,29\n')
    with pytest.raises(LabelError, match=r"train.csv line 4 \(id b\nb\)"):  # a quoted id spanning lines 4-5
        read_sample_table(csv)
    csv.write_text("Id,Target\n\naaa,0\n\n\nccc,29\n")
    with pytest.raises(LabelError, match=r"train.csv line 6 \(id ccc\): label 29 is outside"):
        read_sample_table(csv)
