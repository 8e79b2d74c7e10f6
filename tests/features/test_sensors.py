import numpy as np
import polars as pl
import pytest

from spectral.features.sensors import SENSOR_FEATURES, compute_features, read_sensor_table, sensor_features

F = {name: i for i, name in enumerate(SENSOR_FEATURES)}
HEADER = ("timestamp,magnetic_magnitude,accel_x,accel_y,accel_z,gyro_x,gyro_y,gyro_z,orientation_yaw,audio_peak,"
          "humanoid_detected,bluetooth_count")


def write(tmp_path, text, name="sensors.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_schema_has_fifteen_named_features():
    assert len(SENSOR_FEATURES) == 15 and len(set(SENSOR_FEATURES)) == 15


def test_spec_features_from_unsorted_rows_and_true_false_strings(tmp_path):
    path = write(tmp_path, HEADER + "\n"
                 "2000,50,0,0,9.8,0,0,0,90,0.5,False,2\n"
                 "1000,40,3,4,0,1,2,2,10,0.1,True,4\n"
                 "3000,60,0,0,9.8,0,0,0,-45,0.2,false,0\n")
    f = sensor_features(path)
    assert f[F["magnetic_mean"]] == pytest.approx(50) and f[F["magnetic_std"]] == pytest.approx(10)
    assert f[F["magnetic_max"]] == 60 and f[F["magnetic_min"]] == 40
    assert f[F["accel_norm_mean"]] == pytest.approx((5 + 9.8 + 9.8) / 3)
    assert f[F["gyro_norm_mean"]] == pytest.approx(3 / 3)
    assert f[F["final_yaw"]] == -45  # the latest sample by timestamp, not the last line
    assert f[F["audio_peak_max"]] == 0.5 and f[F["humanoid_any"]] == 1.0
    assert f[F["bluetooth_mean"]] == pytest.approx(2)


def test_missing_column_leaves_nan_in_its_own_slot_and_shifts_nothing(tmp_path):
    full = HEADER + "\n1000,40,0,0,9.8,0,0,0,10,0.1,0,3\n2000,42,0,0,9.8,0,0,0,20,0.3,1,5\n"
    without_gyro = "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i not in (5, 6, 7))
                             for line in full.strip().split("\n")) + "\n"
    a = sensor_features(write(tmp_path, full, "a.csv"))
    b = sensor_features(write(tmp_path, without_gyro, "b.csv"))
    assert np.isnan(b[F["gyro_norm_mean"]])
    keep = [i for i in range(15) if i != F["gyro_norm_mean"]]
    np.testing.assert_array_equal(a[keep], b[keep])


def test_one_row_extra_columns_and_blank_values(tmp_path):
    path = write(tmp_path, "extra,timestamp,magnetic_magnitude,audio_peak,humanoid_detected,note\n"
                           "x,1,45.5,,yes,hello\n")
    f = sensor_features(path)
    assert f[F["magnetic_mean"]] == 45.5 and f[F["magnetic_std"]] == 0.0
    assert np.isnan(f[F["audio_peak_max"]]) and f[F["humanoid_any"]] == 1.0
    assert np.isnan(f[F["corr_magnetic_audio"]]) and np.isnan(f[F["accel_norm_mean"]])


def test_nan_strings_are_missing_values_not_poison(tmp_path):
    rows = "1,NaN,0,0,1,0,0,0,0,0.1,0,1\n2,50,0,0,1,0,0,0,0,0.2,0,1\n3,52,0,0,1,0,0,0,0,0.3,0,1\n"
    path = write(tmp_path, HEADER + "\n" + rows)
    f = sensor_features(path)
    assert f[F["magnetic_mean"]] == pytest.approx(51)


def test_fifty_thousand_rows(tmp_path):
    n = 50_000
    rng = np.random.default_rng(0)
    t = np.arange(n)
    spike = np.exp(-0.5 * ((t - 25_000) / 50) ** 2)
    table = pl.DataFrame({"timestamp": t, "magnetic_magnitude": 45 + 20 * spike + rng.normal(0, 0.5, n),
                          "audio_peak": 0.1 + 0.8 * spike + rng.normal(0, 0.01, n)})
    table.write_csv(tmp_path / "big.csv")
    f = sensor_features(tmp_path / "big.csv")
    assert f[F["corr_magnetic_audio"]] > 0.7 and f[F["magnetic_peak_z"]] > 20


def test_header_only_and_no_known_columns_raise(tmp_path):
    with pytest.raises(ValueError, match="no data rows"):
        sensor_features(write(tmp_path, HEADER + "\n", "empty.csv"))
    with pytest.raises(ValueError, match="none of the known sensor columns is present"):
        sensor_features(write(tmp_path, "a,b\n1,2\n", "alien.csv"))


def test_file_order_is_kept_without_timestamp(tmp_path):
    table = read_sensor_table(write(tmp_path, "orientation_yaw,magnetic_magnitude\n10,1\n30,2\n20,3\n"))
    f = compute_features(table)
    assert f[F["final_yaw"]] == 20 and f[F["magnetic_mean"]] == 2.0
