namespace Cas.Engine;

/// <summary>Base of every error the engine reports on purpose. Messages say what was wrong and what to do.</summary>
public class CasException : Exception
{
    public CasException(string message) : base(message) { }
    public CasException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A model or tokenizer file is missing, truncated, malformed, or describes something we do not support.</summary>
public sealed class ModelFormatException : CasException
{
    public ModelFormatException(string message) : base(message) { }
    public ModelFormatException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>The caller asked for something invalid (bad argument, prompt too long, ...).</summary>
public sealed class InvalidRequestException : CasException
{
    public InvalidRequestException(string message) : base(message) { }
}
