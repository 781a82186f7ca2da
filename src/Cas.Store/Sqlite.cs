using System.Globalization;
using Microsoft.Data.Sqlite;

namespace Cas.Store;

/// <summary>What the store's manifest and the collections' catalog share about SQLite: opening durably, commands, times.</summary>
public static class Sqlite
{
    /// <summary>Opens (creating) a database with WAL and synchronous=FULL: a committed transaction survives power loss.</summary>
    public static SqliteConnection Open(string path)
    {
        var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        db.Open();
        db.Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;");
        return db;
    }

    public static void Exec(this SqliteConnection db, string sql)
    {
        using var c = db.CreateCommand();
        c.CommandText = sql;
        c.ExecuteNonQuery();
    }

    /// <summary>A command with named parameters (null → NULL).</summary>
    public static SqliteCommand Cmd(this SqliteConnection db, string sql, params (string Name, object? Value)[] args)
    {
        var c = db.CreateCommand();
        c.CommandText = sql;
        foreach (var (n, v) in args) c.Parameters.AddWithValue(n, v ?? DBNull.Value);
        return c;
    }

    /// <summary>UTC now as stored: ISO-8601 with milliseconds.</summary>
    public static string Now() => DateTime.UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture);

    public static DateTime ParseTime(string s) => DateTime.Parse(s, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal);
}
