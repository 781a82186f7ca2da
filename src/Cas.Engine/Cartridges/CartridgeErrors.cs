namespace Cas.Engine.Cartridges;

/// <summary>Base of the errors about cartridge files and their use with a model.</summary>
public class CartridgeException : CasException
{
    public CartridgeException(string message) : base(message) { }
    public CartridgeException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>The file is not a cartridge, is damaged, or holds values that are not finite.</summary>
public sealed class CartridgeFormatException : CartridgeException
{
    public CartridgeFormatException(string message) : base(message) { }
    public CartridgeFormatException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A valid cartridge that was trained for another model (fingerprint or shapes differ).</summary>
public sealed class CartridgeMismatchException : CartridgeException
{
    public CartridgeMismatchException(string message) : base(message) { }
}
